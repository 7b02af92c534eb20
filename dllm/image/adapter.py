"""Masked image generation adapter (aMUSEd-style MDMs) for Co-GRPO.

A rollout is a trajectory: a schedule vector z ~ pi_phi per image (dllm.image.schedule), then K
sampler steps from an all-masked token grid, each drawing tokens from the (guided, tempered) model
and re-masking the least confident ones by the schedule's count. The batch stores what scoring
needs: the grid before every step (`extras["states"]` [N, K, L]), the step that committed each
position (`extras["commit_step"]` [N, L]), z (`extras["schedule_z"]`) and the frozen text
encoder's outputs. `completion_ids` [N, L + 1] holds the final tokens plus one column for the
schedule action (its id is unused); `log_probs` returns the matching [N, L + 1] log-probabilities,
so the core's clipped token-level loss and group-relative advantages apply to both policies, and
`batch.loss_mask` (set per step by `alternate_policies`) chooses which one an update trains. No
gradient flows through the sampling chain: each step's log-probability is recomputed from its
stored input grid (trajectory-level, as in the paper). The decoded images (PIL) are the
completions the rewards score.
"""
from __future__ import annotations

import torch

from dllm.image.models import decode_tokens
from dllm.image.schedule import schedule_from, scheduled_step
from mmrl.core.adapter import group_sizes
from mmrl.core.batch import RolloutBatch


def prompt_text(example: dict) -> str:
    """The text of a row's prompt: the last chat message, or the raw prompt string."""
    prompt = example["prompt"]
    return prompt[-1]["content"] if isinstance(prompt, list) else str(prompt)


def to_pil(images: torch.Tensor) -> list:
    """PIL images of [N, 3, H, W] tensors in [-1, 1]."""
    from PIL import Image

    arrays = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


class MaskedImageAdapter:
    def __init__(self, pipeline, steps: int = 12, image_size: int | None = None, guidance: bool = False,
                 logprob_chunk_rows: int = 8):
        self.pipeline = pipeline
        self.tokenizer = pipeline.tokenizer
        self.text_encoder, self.vqvae, self.scheduler = pipeline.text_encoder, pipeline.vqvae, pipeline.scheduler
        self.mask_token_id = int(self.scheduler.config.mask_token_id)
        self.steps, self.guidance = steps, guidance
        scale = 2 ** (len(self.vqvae.config.block_out_channels) - 1)
        self.image_size = image_size or self.vqvae.config.sample_size
        if self.image_size % scale:
            raise ValueError(f"model.schedule.image_size={self.image_size} must be a multiple of the VQ scale {scale}")
        self.grid = self.image_size // scale
        self.logprob_chunk_rows = logprob_chunk_rows

    # ------------------------------------------------------------------ prompts
    def prepare(self, example: dict) -> str:
        return prompt_text(example)

    @torch.no_grad()
    def encode_text(self, prompts: list[str], device) -> dict:
        """The frozen text encoder's pooled and per-token outputs (as AmusedPipeline computes them),
        with the empty prompt's for guidance, and the micro-conditioning."""
        def run(texts):
            ids = self.tokenizer(texts, return_tensors="pt", padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length).input_ids.to(device)
            out = self.text_encoder.to(device)(ids, return_dict=True, output_hidden_states=True)
            return ids, out.text_embeds, out.hidden_states[-2]

        ids, pooled, hidden = run(prompts)
        micro = torch.tensor([self.image_size, self.image_size, 0, 0, 6], dtype=hidden.dtype, device=device)
        text = {"ids": ids, "pooled": pooled, "hidden": hidden, "micro_conds": micro.expand(len(prompts), -1)}
        if self.guidance:
            _, un_pooled, un_hidden = run([""])
            text.update(uncond_pooled=un_pooled.expand_as(pooled), uncond_hidden=un_hidden.expand_as(hidden))
        return text

    @staticmethod
    def text_of(batch: RolloutBatch) -> dict:
        keys = ("pooled", "hidden", "micro_conds", "uncond_pooled", "uncond_hidden")
        return {k: batch.extras["text_" + k] for k in keys if "text_" + k in batch.extras}

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def generate(self, model, examples: list[dict], group_size: int | list[int], rollout_cfg=None,
                 mode: bool = False, generator: torch.Generator | None = None) -> RolloutBatch:
        """`group_size` trajectories per example; `mode` samples every image at the schedule policy's
        mean (before / after grids) instead of drawing z."""
        sizes = group_sizes(group_size, len(examples))
        device = next(model.parameters()).device
        prompts = [prompt_text(e) for e, k in zip(examples, sizes.tolist()) for _ in range(k)]
        text = self.encode_text(prompts, device)
        rows, length = len(prompts), self.grid * self.grid
        z = model.schedule.mean.detach().expand(rows, -1).clone() if mode else model.schedule.sample(rows, generator)
        plan = schedule_from(z, model.schedule.knobs, self.steps, length)
        sample = torch.full((rows, length), self.mask_token_id, dtype=torch.long, device=device)
        states = torch.empty(rows, self.steps, length, dtype=torch.long, device=device)
        commit_step = torch.full((rows, length), -1, dtype=torch.long, device=device)
        was_training = model.training
        model.eval()
        for k in range(self.steps):
            states[:, k] = sample
            logits = model.step_logits(sample.view(rows, self.grid, self.grid), text, plan.guidance_scale)
            new = scheduled_step(logits, sample, plan.remaining[:, k], plan.sample_temperature,
                                 plan.remask_temperature[:, k], self.mask_token_id, last=k == self.steps - 1,
                                 generator=generator)
            commit_step = torch.where((sample == self.mask_token_id) & (new != self.mask_token_id), k, commit_step)
            sample = new
        model.train(was_training)
        images = decode_tokens(self.vqvae.to(device), sample.view(rows, self.grid, self.grid))
        extras = {"states": states.cpu(), "commit_step": commit_step.cpu(), "schedule_z": z.cpu(),
                  **{"text_" + k: v.cpu() for k, v in text.items() if k != "ids"}}
        return RolloutBatch(prompt_ids=text["ids"].cpu(), prompt_mask=torch.ones_like(text["ids"]).cpu(),
                            completion_ids=torch.cat([sample, torch.zeros_like(sample[:, :1])], dim=1).cpu(),
                            completion_mask=torch.ones(rows, length + 1, dtype=torch.long),
                            group_ids=torch.arange(len(examples)).repeat_interleave(sizes), extras=extras,
                            examples=[e for e, k in zip(examples, sizes.tolist()) for _ in range(k)],
                            completions_text=to_pil(images))

    def encode(self, examples: list[dict], completions: list[str]) -> RolloutBatch:
        raise ValueError("masked image rollouts are sampling trajectories, which a given image does not determine: "
                         "there is no teacher-forced encoding (set sft.steps: 0 and rescoring off for model.modality: mdm)")

    # ------------------------------------------------------------------ scoring
    def log_probs(self, model, batch: RolloutBatch, with_entropy: bool = False):
        """[N, L + 1] log-probabilities of the stored trajectories: each token at its commit step,
        then the schedule vector (and entropies: each token's step distribution, the schedule's)."""
        outs = []
        step = max(1, self.logprob_chunk_rows)
        for lo in range(0, len(batch), step):
            part = batch.select(torch.arange(lo, min(lo + step, len(batch))))
            outs.append(model(part.extras["states"], part.extras["commit_step"], part.completion_ids[:, :-1],
                              part.extras["schedule_z"], self.text_of(part), with_entropy=with_entropy))
        if with_entropy:
            return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        return torch.cat(outs)

    def save_pretrained(self, directory) -> None:
        """The frozen parts and model_index.json, so `directory` (with the policy's transformer/ and
        schedule file) loads as an AmusedPipeline."""
        for name, part in (("tokenizer", self.tokenizer), ("text_encoder", self.text_encoder),
                           ("vqvae", self.vqvae), ("scheduler", self.scheduler)):
            part.save_pretrained(f"{directory}/{name}")
        self.pipeline.save_config(directory)  # model_index.json: which class loads each part


def sample_grid(adapter: MaskedImageAdapter, model, examples: list[dict], per_prompt: int = 4, seed: int = 0) -> list:
    """Images of `per_prompt` trajectories for each example at the schedule policy's mean, from a fixed
    seed (the same draws before and after training)."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    return adapter.generate(model, examples, per_prompt, mode=True, generator=generator).completions_text


def save_grid(rows: dict[str, list], path, scale: int = 4) -> None:
    """One PNG with a row of images per label (e.g. "before | a red image"), upscaled `scale` times,
    the label on the left."""
    from PIL import Image, ImageDraw

    size = next(iter(rows.values()))[0].size[0] * scale
    label_w, pad = 8 + 6 * max(len(label) for label in rows), 2
    per_row = max(len(images) for images in rows.values())
    canvas = Image.new("RGB", (label_w + per_row * (size + pad), len(rows) * (size + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows.items()):
        draw.text((4, r * (size + pad) + size // 2 - 6), label, fill="black")
        for c, image in enumerate(images):
            canvas.paste(image.resize((size, size), Image.NEAREST), (label_w + c * (size + pad), r * (size + pad)))
    canvas.save(path)
