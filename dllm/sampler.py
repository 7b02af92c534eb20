"""Block semi-autoregressive generation with low-confidence remasking (LLaDA, Nie et al. 2025,
arXiv 2502.09992; ML-GSAI/LLaDA generate.py), with optional fixed (inpainted) tokens.

The canvas is the prompt followed by `gen_length` mask tokens, cut into blocks of `block_length`
decoded left to right, `steps / num_blocks` steps each. Every step runs the model on the whole
canvas; diffusers' `BlockRefinementScheduler.step` samples a token at every position of the current
block (temperature, top-k, top-p; greedy at temperature 0) and returns each sampled token's
probability; then the most confident masked positions of each row are committed. How many: LLaDA's
`get_num_transfer_tokens`, per row, over the masks the block holds when its decoding starts, spread
evenly over the block's steps (the first steps take the remainder), so a row whose block already
holds fixed tokens (IGPO's hint chunks) commits its remaining masks at LLaDA's pace (5 masks over 4
steps: 2, 1, 1, 1) instead of finishing early. (The scheduler's own commit splits the block length,
not the masks left, over the steps, which is why only its sampling is used.) Fixed tokens are on the
canvas from the start and, not being mask tokens, are never selected or changed; a committed token
never changes; the mask token itself is never sampled.
The confidence that ranks positions: `sampled` (default), the probability of the sampled token under
the tempered, top-k/p filtered distribution it was drawn from (diffusers' scheduler); or `model`,
its probability under the untempered model, LLaDA's `low_confidence` remasking (the same at
temperature 1 without top-k/p).

Why not diffusers' `LLaDA2Pipeline`: it is built for LLaDA2's block-causal models (each forward sees
only the blocks up to the current one), aligns blocks from position 0 with a single prompt length for
the whole batch, and has no way to pin tokens inside the generated region; LLaDA-8B and Dream attend
to the whole canvas.
"""
from __future__ import annotations

import torch

CONFIDENCES = ("sampled", "model")


def block_schedule(gen_length: int, block_length: int, steps: int) -> tuple[int, int]:
    """(number of blocks, steps per block); raises naming the fields when they do not divide."""
    if gen_length % block_length:
        raise ValueError(f"rollout.max_new_tokens={gen_length} must be a multiple of model.diffusion.block_length="
                         f"{block_length}")
    blocks = gen_length // block_length
    if steps % blocks or steps < blocks:
        raise ValueError(f"model.diffusion.steps={steps} must be a positive multiple of the {blocks} blocks "
                         f"(max_new_tokens / block_length)")
    return blocks, steps // blocks


def transfer_counts(masks: torch.Tensor, steps: int) -> torch.Tensor:
    """[N, steps] tokens each row commits at each step of a block holding `masks` [N] mask tokens
    (LLaDA's get_num_transfer_tokens: masks // steps each, the first masks % steps steps one more)."""
    base, remainder = masks // steps, masks % steps
    return base[:, None] + (torch.arange(steps, device=masks.device)[None] < remainder[:, None]).long()


def most_confident(confidence: torch.Tensor, masked: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[N, B] bool: in each row, the counts[r] masked positions of highest confidence."""
    ranked = confidence.masked_fill(~masked, float("-inf")).argsort(dim=-1, descending=True, stable=True)
    keep = torch.arange(confidence.shape[1], device=confidence.device)[None] < counts[:, None]
    return torch.zeros_like(masked).scatter(1, ranked, keep) & masked


@torch.no_grad()
def generate_blocks(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, gen_length: int, block_length: int,
                    steps: int, mask_token_id: int, temperature: float = 1.0, top_p: float | None = None,
                    top_k: int | None = None, fixed: torch.Tensor | None = None, shift_logits: bool = False,
                    generator: torch.Generator | None = None, on_step=None, confidence: str = "sampled") -> torch.Tensor:
    """Completion tokens [N, gen_length]. `fixed` [N, gen_length]: a token id to pin at a position,
    -1 where the model decodes. `on_step(canvas)` (tests) sees the canvas after every step."""
    from diffusers import BlockRefinementScheduler

    if confidence not in CONFIDENCES:
        raise ValueError(f"model.diffusion.confidence: '{confidence}' is not one of {list(CONFIDENCES)}")
    blocks, per_block = block_schedule(gen_length, block_length, steps)
    rows, start = prompt_ids.shape[0], prompt_ids.shape[1]
    device = prompt_ids.device
    completion = torch.full((rows, gen_length), mask_token_id, dtype=torch.long, device=device)
    if fixed is not None:
        completion = torch.where(fixed >= 0, fixed.to(device), completion)
    canvas = torch.cat([prompt_ids, completion], dim=1)
    attention = torch.cat([prompt_mask, torch.ones_like(completion)], dim=1)
    scheduler = BlockRefinementScheduler(block_length=block_length, num_inference_steps=per_block, threshold=2.0)
    scheduler.set_timesteps(per_block, device=device, block_length=block_length)
    for b in range(blocks):
        lo, hi = start + b * block_length, start + (b + 1) * block_length
        counts = transfer_counts((canvas[:, lo:hi] == mask_token_id).sum(-1), per_block)
        for s in range(per_block):
            block = canvas[:, lo:hi]
            masked = block == mask_token_id
            if not masked.any():
                break
            logits = model(input_ids=canvas, attention_mask=attention).logits
            if shift_logits:
                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
            block_logits = logits[:, lo:hi].float()
            block_logits[..., mask_token_id] = float("-inf")
            out = scheduler.step(block_logits, s, block, mask_token_id=mask_token_id, temperature=temperature,
                                 top_p=top_p, top_k=top_k, threshold=2.0, editing_threshold=None,
                                 generator=generator)
            score = out.sampled_probs.float() if confidence == "sampled" else \
                torch.softmax(block_logits, -1).gather(-1, out.sampled_tokens.unsqueeze(-1)).squeeze(-1)
            commit = most_confident(score, masked, counts[:, s])
            canvas[:, lo:hi] = torch.where(commit, out.sampled_tokens, block)
            if on_step is not None:
                on_step(canvas.clone())
    return canvas[:, start:]
