"""Block semi-autoregressive generation with low-confidence remasking (LLaDA, Nie et al. 2025,
arXiv 2502.09992; ML-GSAI/LLaDA generate.py), with optional fixed (inpainted) tokens.

The canvas is the prompt followed by `gen_length` mask tokens, cut into blocks of `block_length`
decoded left to right, `steps / num_blocks` steps each. Every step runs the model on the whole
canvas and hands the current block to diffusers' `BlockRefinementScheduler.step`, which samples a
token at every masked position (temperature, top-k, top-p) and commits the most confident ones: the
block's length spread evenly over its steps (`get_num_transfer_tokens`), the confidence threshold
turned off so the counts are LLaDA's, editing off so a committed token never changes. Tokens given
in `fixed` (IGPO's hint chunks) are on the canvas from the start; they are not mask tokens, so the
scheduler never selects or changes them. The mask token itself is never sampled.

Why not diffusers' `LLaDA2Pipeline`: it is built for LLaDA2's block-causal models (each forward sees
only the blocks up to the current one), aligns blocks from position 0 with a single prompt length for
the whole batch, and has no way to pin tokens inside the generated region; LLaDA-8B and Dream attend
to the whole canvas. Differences from LLaDA's own sampler: the confidence is the probability of the
sampled token under the tempered (and top-k/p filtered) distribution (LLaDA: untempered; the same at
temperature 1), and a block whose fixed tokens leave fewer masks than its length finishes early.
"""
from __future__ import annotations

import torch


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


@torch.no_grad()
def generate_blocks(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, gen_length: int, block_length: int,
                    steps: int, mask_token_id: int, temperature: float = 1.0, top_p: float | None = None,
                    top_k: int | None = None, fixed: torch.Tensor | None = None, shift_logits: bool = False,
                    generator: torch.Generator | None = None, on_step=None) -> torch.Tensor:
    """Completion tokens [N, gen_length]. `fixed` [N, gen_length]: a token id to pin at a position,
    -1 where the model decodes. `on_step(canvas)` (tests) sees the canvas after every step."""
    from diffusers import BlockRefinementScheduler

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
        for s in range(per_block):
            block = canvas[:, lo:hi]
            if not (block == mask_token_id).any():
                break
            logits = model(input_ids=canvas, attention_mask=attention).logits
            if shift_logits:
                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
            block_logits = logits[:, lo:hi].float()
            block_logits[..., mask_token_id] = float("-inf")
            out = scheduler.step(block_logits, s, block, mask_token_id=mask_token_id, temperature=temperature,
                                 top_p=top_p, top_k=top_k, threshold=2.0, editing_threshold=None,
                                 generator=generator)
            canvas[:, lo:hi] = out.prev_sample
            if on_step is not None:
                on_step(canvas.clone())
    return canvas[:, start:]
