"""Vision-language adapter: Qwen2-VL / Qwen2.5-VL / Qwen3-VL (any AutoModelForImageTextToText with an
AutoProcessor of the Qwen-VL kind) on chat prompts with images.

Images go through qwen_vl_utils.process_vision_info (the resizing the Qwen-VL models were trained
with, bounded by `min_pixels` / `max_pixels`) and the processor once per prompt; the G completions
of a group share that prompt's processed pixels, and the vision tower encodes them once per group,
its outputs repeated per completion (`share_vision`, passed to the model as `mm_encoder_outputs`),
in generation and in scoring: the same samples and gradients as encoding every row (tested). The
processor's flat `pixel_values`
[patches, D] / `image_grid_thw` [images, 3] are stored per row (zero padded) in `batch.extras`, so
micro-batching and re-padding keep working, and joined back for each forward. 3-D rope positions
need `mm_token_type_ids`, rebuilt from the token ids at every forward.
"""
from __future__ import annotations

import torch

from mmrl.core.adapter import (LogProbsFromLogits, group_sizes, sampled_completions, sampling_kwargs,
                               tokenized_completions)
from mmrl.core.batch import RolloutBatch, group_starts


def rows_of_vision(pixel_values: torch.Tensor, grid_thw: torch.Tensor, images_per_row: list[int]) -> dict:
    """Processor outputs for several prompts -> per-prompt tensors with a leading row dimension:
    pixel_values [R, P_max, D] (+ num_patches [R]) and image_grid_thw [R, I_max, 3] (+ num_images [R])."""
    patches = grid_thw.prod(-1)
    image_chunks = grid_thw.split(images_per_row)
    patch_counts = [int(c.sum()) for c in patches.split(images_per_row)]
    pixel_chunks = pixel_values.split(patch_counts)
    rows = len(images_per_row)
    pv = pixel_values.new_zeros(rows, max(patch_counts), pixel_values.shape[-1])
    thw = grid_thw.new_zeros(rows, max(images_per_row), 3)
    for r in range(rows):
        pv[r, :patch_counts[r]] = pixel_chunks[r]
        thw[r, :images_per_row[r]] = image_chunks[r]
    return {"pixel_values": pv, "num_patches": torch.tensor(patch_counts), "image_grid_thw": thw,
            "num_images": torch.tensor(images_per_row)}


def join_vision(extras: dict) -> dict:
    """Inverse of rows_of_vision for the rows present: the flat tensors the model's forward takes."""
    if "pixel_values" not in extras:
        return {}
    n_patch, n_img = extras["num_patches"].tolist(), extras["num_images"].tolist()
    if sum(n_img) == 0:
        return {}
    pv = torch.cat([extras["pixel_values"][r, :n] for r, n in enumerate(n_patch)])
    thw = torch.cat([extras["image_grid_thw"][r, :n] for r, n in enumerate(n_img)])
    return {"pixel_values": pv, "image_grid_thw": thw}


def encode_images_once_per_group(model, extras: dict, group_ids: torch.Tensor, device):
    """Vision-tower outputs for the rows of a batch, computed once per group (the G completions of a
    prompt share its pixels) and repeated per row, in the `mm_encoder_outputs` form the Qwen-VL
    forwards take instead of pixel_values. Gradients reach the tower once per group, summed over
    its rows, exactly as G separate encodings would give."""
    starts = group_starts(group_ids.cpu())
    sizes = torch.diff(torch.cat([starts, torch.tensor([len(group_ids)])])).tolist()
    unique = join_vision({k: v[starts.to(v.device)] for k, v in extras.items()})
    out = model.get_image_features(unique["pixel_values"].to(device), unique["image_grid_thw"].to(device),
                                   return_dict=True)
    per_row = extras["num_images"][starts.to(extras["num_images"].device)].tolist()

    def expand(per_image: tuple) -> tuple:
        rows, k = [], 0
        for n_img, size in zip(per_row, sizes):
            rows += list(per_image[k:k + n_img]) * size
            k += n_img
        return tuple(rows)

    out.pooler_output = expand(out.pooler_output)
    if getattr(out, "deepstack_features", None) is not None:  # Qwen3-VL: per-layer features
        out.deepstack_features = [expand(level) for level in out.deepstack_features]
    return out


class VLMAdapter(LogProbsFromLogits):
    """Prompts are left padded, completions right padded; log-probs at the sampling temperature."""

    def __init__(self, processor, min_pixels: int = 3136, max_pixels: int = 501_760, logprob_chunk_rows: int = 4,
                 temperature: float = 1.0, share_vision: bool = True):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.patch_size = getattr(processor.image_processor, "patch_size", 14)
        self.logprob_chunk_rows = logprob_chunk_rows
        self.temperature = temperature
        self.share_vision = share_vision  # one vision-tower pass per group (generate and score), not per row
        eos = self.tokenizer.eos_token_id
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos)
        ids = self.tokenizer.convert_tokens_to_ids
        self.image_token_id, self.video_token_id = ids("<|image_pad|>"), ids("<|video_pad|>")
        # Vision placeholders are never sampled: the model would look for pixels to put there.
        self.suppressed = [self.image_token_id, self.video_token_id,
                           ids("<|vision_start|>"), ids("<|vision_end|>")]

    # ------------------------------------------------------------------ prompts
    def prepare(self, example: dict):
        """(chat text, resized PIL images) of one example's `prompt` messages."""
        from qwen_vl_utils import process_vision_info

        messages = [dict(m, content=[dict(c, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
                                     if isinstance(c, dict) and c.get("type") == "image" else c
                                     for c in m["content"]]) if isinstance(m["content"], list) else m
                    for m in example["prompt"]]
        images, _ = process_vision_info(messages, image_patch_size=self.patch_size)
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, images or []

    def _encode_prompts(self, examples: list[dict]):
        prepared = [self.prepare(e) for e in examples]
        images = [im for _, ims in prepared for im in ims]
        enc = self.processor(text=[t for t, _ in prepared], images=images or None, padding=True,
                             return_tensors="pt")
        extras = {}
        if images:
            extras = rows_of_vision(enc["pixel_values"], enc["image_grid_thw"], [len(ims) for _, ims in prepared])
        return enc["input_ids"], enc["attention_mask"], extras

    def mm_token_type_ids(self, input_ids: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """0 text, 1 image, 2 video: what Qwen-VL's 3-D rope index needs (without it, 1-D positions).
        Only prompt positions can hold vision inputs; a sampled <|image_pad|> in a completion is text."""
        types = (input_ids == self.image_token_id).long() + 2 * (input_ids == self.video_token_id).long()
        types[:, prompt_length:] = 0
        return types

    def _model_inputs(self, input_ids, attention_mask, extras: dict, device, prompt_length: int) -> dict:
        vision = {k: v.to(device) for k, v in join_vision(extras).items()}
        return dict(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                    mm_token_type_ids=self.mm_token_type_ids(input_ids, prompt_length).to(device), **vision)

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def generate(self, model, examples: list[dict], group_size: int | list[int], rollout_cfg) -> RolloutBatch:
        sizes = group_sizes(group_size, len(examples))
        prompt_ids, prompt_mask, extras = self._encode_prompts(examples)
        prompt_ids, prompt_mask = prompt_ids.repeat_interleave(sizes, 0), prompt_mask.repeat_interleave(sizes, 0)
        extras = {k: v.repeat_interleave(sizes, 0) for k, v in extras.items()}
        device = next(model.parameters()).device
        inputs = self._model_inputs(prompt_ids, prompt_mask, extras, device, prompt_ids.shape[1])
        if self.share_vision and "pixel_values" in inputs and int(sizes.max()) > 1:
            inputs.pop("pixel_values")  # encode each prompt's images once, not once per completion
            group_ids = torch.arange(len(examples)).repeat_interleave(sizes)
            inputs["mm_encoder_outputs"] = {"image": encode_images_once_per_group(model, extras, group_ids, device)}
        was_training = model.training
        model.eval()
        out = model.generate(**inputs, **sampling_kwargs(rollout_cfg), pad_token_id=self.tokenizer.pad_token_id,
                             eos_token_id=self.eos_token_ids, suppress_tokens=self.suppressed, use_cache=True)
        model.train(was_training)
        completion_ids, completion_mask, texts = sampled_completions(out, prompt_ids.shape[1], self.tokenizer,
                                                                     self.eos_token_ids)
        return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                            completion_mask=completion_mask,
                            group_ids=torch.arange(len(examples)).repeat_interleave(sizes), extras=extras,
                            examples=[e for e, k in zip(examples, sizes.tolist()) for _ in range(k)],
                            completions_text=texts)

    def encode(self, examples: list[dict], completions: list[str]) -> RolloutBatch:
        prompt_ids, prompt_mask, extras = self._encode_prompts(examples)
        completion_ids, completion_mask = tokenized_completions(self.tokenizer, completions, self.eos_token_ids[0])
        return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                            completion_mask=completion_mask, group_ids=torch.arange(len(examples)), extras=extras,
                            examples=list(examples), completions_text=list(completions))

    # ------------------------------------------------------------------ scoring
    def completion_logits(self, model, batch: RolloutBatch) -> torch.Tensor:
        """[N, C, V] logits predicting each completion token, at the sampling temperature."""
        input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
        attention_mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
        n_completion = batch.completion_ids.shape[1]
        device = batch.prompt_ids.device
        inputs = self._model_inputs(input_ids, attention_mask, batch.extras, device, batch.prompt_ids.shape[1])
        if self.share_vision and "pixel_values" in inputs and len(group_starts(batch.group_ids.cpu())) < len(batch):
            inputs.pop("pixel_values")
            bare = model.module if hasattr(model, "module") else model  # DDP: the wrapped model's method
            inputs["mm_encoder_outputs"] = {"image": encode_images_once_per_group(bare, batch.extras,
                                                                                 batch.group_ids, device)}
        logits = model(**inputs, logits_to_keep=n_completion + 1, use_cache=False).logits[:, :-1]
        return self.at_temperature(logits)

    def save_pretrained(self, directory) -> None:
        self.processor.save_pretrained(directory)
