"""Masked diffusion LM adapter: rollouts by block semi-autoregressive decoding (dllm.sampler), scoring
by a named likelihood estimator (dllm.estimators), and LLaDA's supervised loss for the warm-up.

Any mask predictor works: a model whose forward(input_ids, attention_mask) returns `.logits` for
every position of a partially masked sequence, with a known mask token id (LLaDA-8B, Dream-7B with
`shift_logits`, LLaDA2 through their remote code; the tiny model of dllm.models). Each rollout row
gets a mask seed (`extras["mask_seed"]`) from which the estimator draws its masks, per inner
iteration (`log_probs(..., iteration=k)`, passed by the trainer: `fresh_masks`), so the old, reference and current
policies see identical masks. The G completions of a prompt share their seed (common random
numbers: tokens they have in common at the same positions are masked alike, so their terms cancel
in the group-relative update rather than adding noise). Rows rolled out with fixed hint tokens (IGPO) carry
`extras["hint_mask"]` [N, C] (every pinned position, before or after the first EOS).

What is masked and what the loss counts: the sampler fills a canvas of `max_new_tokens` tokens, the
answer followed by EOS padding. Every estimator draws its masks over the whole canvas: scoring with
the padding visible would tell the model the answer's length, a context it never has while sampling.
The loss counts the tokens up to and including the first EOS (`loss_scope: answer`, the default, d1's
completion mask), or, for the ELBO estimators with `loss_scope: canvas`, the whole canvas
(`batch.loss_mask`; LLaDA's SFT trains on the padding). On the tiny demo GDPO's sequence loss
learned stably with `answer`; with `canvas` it rose and then collapsed at every learning rate tried
(the entropy climbed and the completions grew longer).
"""
from __future__ import annotations

import torch

from dllm.estimators import ESTIMATORS, estimate
from dllm.sampler import CONFIDENCES, block_schedule, generate_blocks
from mmrl.core.adapter import ChatPrompts, completion_mask_from_eos
from mmrl.core.batch import RolloutBatch


def check_left_to_right(estimator: str, rollout_cfg, block_length: int, steps: int | None, temperature: float) -> None:
    """An exact estimator's likelihood is the rollout policy's only when the rollout commits one token a
    step, left to right, from the tempered distribution it scores (no top-k / top-p)."""
    n = rollout_cfg.max_new_tokens
    fixes = []
    if block_length != 1 or steps != n:
        fixes.append(f"model.diffusion.block_length: 1 and model.diffusion.steps: {n} (rollout.max_new_tokens), "
                     f"not {block_length} and {steps}")
    if rollout_cfg.temperature <= 0 or rollout_cfg.temperature != temperature:
        fixes.append(f"rollout.temperature > 0 (the scored distribution's, {temperature}), not {rollout_cfg.temperature}")
    if rollout_cfg.top_k or rollout_cfg.top_p < 1:
        fixes.append("rollout.top_k: 0 and rollout.top_p: 1.0 (no filtered sampling)")
    if fixes:
        raise ValueError(f"model.diffusion.estimator={estimator} scores rollouts made left to right one token at a "
                         f"time: set {'; '.join(fixes)}")


class MaskedDiffusionAdapter(ChatPrompts):
    fresh_masks = True  # masks are redrawn per inner iteration: the trainer records old log-probs per iteration

    def __init__(self, tokenizer, mask_token_id: int, block_length: int = 32, steps: int | None = None,
                 estimator: str = "one_step", estimator_params: dict | None = None, shift_logits: bool = False,
                 max_prompt_length: int = 512, logprob_chunk_rows: int = 4, sft_eps: float = 1e-3,
                 sft_pad_to: int | None = None, loss_scope: str = "canvas", confidence: str = "sampled",
                 temperature: float = 1.0):
        ESTIMATORS.check_params(estimator, estimator_params or {}, "model.diffusion.estimator_params",
                                skip=("valid", "prompt_valid", "seed", "iteration"))
        self._setup_prompts(tokenizer, max_prompt_length)
        self.mask_token_id = mask_token_id
        self.block_length, self.steps = block_length, steps
        self.estimator, self.estimator_params = estimator, dict(estimator_params or {})
        if confidence not in CONFIDENCES:
            raise ValueError(f"model.diffusion.confidence={confidence!r}: use one of {list(CONFIDENCES)}")
        self.confidence = confidence
        self.temperature = temperature  # the rollout's: an exact estimator scores the distribution it sampled
        self.shift_logits = shift_logits
        self.logprob_chunk_rows = logprob_chunk_rows
        self.sft_eps, self.sft_pad_to = sft_eps, sft_pad_to
        if loss_scope not in ("canvas", "answer"):
            raise ValueError(f"model.diffusion.loss_scope={loss_scope!r}: use canvas or answer")
        self.loss_scope = loss_scope
        if mask_token_id in self.eos_token_ids or mask_token_id == tokenizer.pad_token_id:
            raise ValueError(f"mask token id {mask_token_id} is also the EOS / pad token")

    def _new_seeds(self, rows: int) -> torch.Tensor:
        """Mask seeds of new rows, from the global RNG (checkpointed: a resumed run draws the same)."""
        return torch.randint(0, 2 ** 31 - 1, (rows,))

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def generate(self, model, examples: list[dict], group_size: int | list[int], rollout_cfg,
                 fixed: torch.Tensor | None = None) -> RolloutBatch:
        """`group_size` completions of every example; `fixed` [rows, max_new_tokens] pins hint
        tokens (-1 elsewhere) in each row's canvas (IGPO inpainting)."""
        sizes, prompt_ids, prompt_mask = self._grouped_prompts(model, examples, group_size)
        gen_length = rollout_cfg.max_new_tokens
        steps = self.steps or gen_length // 2
        was_training = model.training
        model.eval()
        completion = generate_blocks(model, prompt_ids, prompt_mask, gen_length, self.block_length, steps,
                                     self.mask_token_id, temperature=rollout_cfg.temperature,
                                     top_p=rollout_cfg.top_p if rollout_cfg.top_p < 1 else None,
                                     top_k=rollout_cfg.top_k or None, fixed=fixed, shift_logits=self.shift_logits,
                                     confidence=self.confidence)
        model.train(was_training)
        completion = completion.cpu()
        completion_mask = completion_mask_from_eos(completion, self.eos_token_ids)
        completion = completion.masked_fill(completion_mask == 0, self.eos_token_ids[0])  # LLaDA's EOS padding
        texts = self.tokenizer.batch_decode(completion.masked_fill(completion_mask == 0, self.tokenizer.pad_token_id),
                                            skip_special_tokens=True)
        hint_mask = (fixed >= 0).cpu() if fixed is not None else torch.zeros_like(completion, dtype=torch.bool)
        extras = {"mask_seed": self._new_seeds(len(examples)).repeat_interleave(sizes), "hint_mask": hint_mask}
        return RolloutBatch(prompt_ids=prompt_ids.cpu(), prompt_mask=prompt_mask.cpu(), completion_ids=completion,
                            completion_mask=completion_mask, group_ids=torch.arange(len(examples)).repeat_interleave(sizes),
                            extras=extras, loss_mask=self._canvas_loss_mask(completion),
                            examples=[e for e, k in zip(examples, sizes.tolist()) for _ in range(k)],
                            completions_text=texts)

    def _canvas_loss_mask(self, completion: torch.Tensor) -> torch.Tensor | None:
        """The loss mask over the whole canvas for an ELBO or exact estimator with loss_scope 'canvas'
        (else None: the completion mask, up to the first EOS)."""
        whole = ESTIMATORS.flag(self.estimator, "weighted") or ESTIMATORS.flag(self.estimator, "exact")
        return torch.ones_like(completion) if whole and self.loss_scope == "canvas" else None

    def check_rollout(self, rollout_cfg) -> None:
        if ESTIMATORS.flag(self.estimator, "exact"):
            check_left_to_right(self.estimator, rollout_cfg, self.block_length, self.steps, self.temperature)
        block_schedule(rollout_cfg.max_new_tokens, self.block_length, self.steps or rollout_cfg.max_new_tokens // 2)

    def encode(self, examples: list[dict], completions: list[str]) -> RolloutBatch:
        """Teacher-forced rows of given texts, padded with EOS as a sampled canvas is."""
        batch = self._teacher_forced(examples, completions, mask_seed=lambda ids: self._new_seeds(len(ids)),
                                     hint_mask=lambda ids: torch.zeros_like(ids, dtype=torch.bool))
        batch.completion_ids = batch.completion_ids.masked_fill(batch.completion_mask == 0, self.eos_token_ids[0])
        batch.loss_mask = self._canvas_loss_mask(batch.completion_ids)
        return batch

    # ------------------------------------------------------------------ scoring
    def log_probs(self, model, batch: RolloutBatch, with_entropy: bool = False, iteration: int = 0):
        """Per-token terms [N, C] of the configured estimator at inner iteration `iteration`'s masks, over
        the whole canvas."""
        seeds = batch.extras["mask_seed"].tolist()
        outs = []
        for lo in range(0, len(batch), max(1, self.logprob_chunk_rows)):
            hi = lo + max(1, self.logprob_chunk_rows)
            outs.append(estimate(model, batch.prompt_ids[lo:hi], batch.prompt_mask[lo:hi], batch.completion_ids[lo:hi],
                                 torch.ones_like(batch.completion_mask[lo:hi]), seeds[lo:hi], iteration, self.estimator,
                                 self.estimator_params, self.mask_token_id, self.shift_logits, with_entropy,
                                 temperature=self.temperature))
        if with_entropy:
            return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        return torch.cat(outs)

    def sft_loss(self, model, batch: RolloutBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """LLaDA's supervised loss: per row t ~ U(0, 1), p = (1 - eps) t + eps, each target token
        masked with probability p, the prompt never; cross-entropy / p on masked tokens, divided by
        the target's length, averaged over rows. With `sft_pad_to` (the rollout length) every target
        is padded with EOS to that width (or to the longest target's, if longer) and the padding is
        trained on, so the model learns to fill the canvas after its answer with EOS, as LLaDA's SFT
        does; every row's length is then the full width."""
        if self.sft_pad_to is not None:  # every row to the canvas width (or the longest target), EOS-padded
            extra = max(self.sft_pad_to - batch.completion_ids.shape[1], 0)
            ids = torch.nn.functional.pad(batch.completion_ids.masked_fill(batch.completion_mask == 0,
                                                                           self.eos_token_ids[0]),
                                          (0, extra), value=self.eos_token_ids[0])
            batch = RolloutBatch(prompt_ids=batch.prompt_ids, prompt_mask=batch.prompt_mask, completion_ids=ids,
                                 completion_mask=torch.ones_like(ids), group_ids=batch.group_ids)
        valid = batch.completion_mask.bool()
        rows = len(batch)
        t = torch.rand(rows, 1, generator=generator).to(valid.device)
        p = (1 - self.sft_eps) * t + self.sft_eps
        masked = (torch.rand(valid.shape, generator=generator).to(valid.device) < p) & valid
        canvas = torch.cat([batch.prompt_ids, batch.completion_ids.masked_fill(masked, self.mask_token_id)], dim=1)
        attention = torch.cat([batch.prompt_mask, torch.ones_like(batch.completion_mask)], dim=1)
        logits = model(input_ids=canvas, attention_mask=attention).logits
        if self.shift_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        logp = torch.log_softmax(logits[:, batch.prompt_ids.shape[1]:].float(), -1)
        nll = -logp.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
        per_row = (nll * masked / p).sum(-1) / valid.sum(-1).clamp(min=1)
        return per_row.mean()

    def save_pretrained(self, directory) -> None:
        self.tokenizer.save_pretrained(directory)
