"""Supervised warm-up before RL: teach the output format on the data's reference solutions.

A recipe stage (config `sft:`), not a separate script: it runs on the prepared (DDP-wrapped or sharded) model
with its own AdamW, each rank taking its share of every global batch.
"""
from __future__ import annotations

import math
import random
import re

import torch
from tqdm.auto import tqdm

from mmrl.core.adapter import adapter_option
from mmrl.core.losses import seq_mean_token_mean
from mmrl.core.sharding import clip_gradients


_THINK = re.compile(r"(<think>)(.*?)(</think>)", re.DOTALL)
EMPTY_THOUGHT = "\n\n"


def thought_dropout(targets: list[str], p: float, seed: int) -> list[str]:
    """TON's thought dropout ("Think or Not?", arXiv 2505.16854, sec. 3.1): each target's reasoning
    inside <think></think> is replaced, with probability p, by the empty thought "\n\n", so the
    SFT stage teaches both formats and RL can learn when to skip (p = 0.5 in the paper).
    Decided once per example (the paper builds one SFT set); targets without think tags are kept."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"sft.thought_dropout={p} must be in [0, 1]")
    rng = random.Random(seed)
    return [_THINK.sub(lambda m: m.group(1) + EMPTY_THOUGHT + m.group(3), t, count=1) if rng.random() < p else t
            for t in targets]


def sft_batches(num_examples: int, batch_size: int, steps: int, sampling: str, generator: torch.Generator):
    """The example indices of each step's global batch: drawn uniformly with replacement, or
    (`epochs`) consecutive slices of shuffled passes over the data, a new permutation each pass."""
    if sampling not in ("replacement", "epochs"):
        raise ValueError(f"sft.sampling: '{sampling}' is not 'replacement' or 'epochs'")
    stream: list[int] = []
    for _ in range(steps):
        if sampling == "replacement":
            yield torch.randint(num_examples, (batch_size,), generator=generator)
            continue
        while len(stream) < batch_size:
            stream += torch.randperm(num_examples, generator=generator).tolist()
        yield torch.tensor(stream[:batch_size])
        stream = stream[batch_size:]


def sft_lr_factor(step: int, steps: int, scheduler: str, warmup_ratio: float) -> float:
    """The learning-rate multiplier at 0-based `step`: linear warm-up over warmup_ratio x steps, then
    constant or a cosine decay to 0 at the last step (LLaMA-Factory's cosine with warm-up ratio)."""
    if scheduler not in ("constant", "cosine"):
        raise ValueError(f"sft.scheduler: '{scheduler}' is not 'constant' or 'cosine'")
    warmup = int(math.ceil(warmup_ratio * steps))
    if step < warmup:
        return (step + 1) / warmup
    if scheduler == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def supervised_warmup(cfg, accelerator, adapter, model, examples: list[dict]) -> list[float]:
    """`cfg.sft.steps` steps of next-token cross-entropy on completions `sft.target_template` (or the
    adapter's own `sft_loss`, e.g. masked diffusion), batches by `sft.sampling`, learning rate by
    `sft.scheduler` / `sft.warmup_ratio`."""
    s = cfg.sft
    world, rank = accelerator.num_processes, accelerator.process_index
    if s.batch_size % world:
        raise ValueError(f"sft.batch_size={s.batch_size} must be divisible by the {world} processes")
    try:
        targets = [s.target_template.format(**e) for e in examples]
    except KeyError as e:
        raise ValueError(f"sft.target_template refers to field {e} that the data rows lack") from None
    if s.thought_dropout > 0:
        targets = thought_dropout(targets, s.thought_dropout, cfg.trainer.seed)
    generator = torch.Generator().manual_seed(cfg.trainer.seed + 1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: sft_lr_factor(step, s.steps, s.scheduler, s.warmup_ratio))
    per_rank = s.batch_size // world
    losses = []
    model.train()
    batches = sft_batches(len(examples), s.batch_size, s.steps, s.sampling, generator)
    for _ in tqdm(range(s.steps), desc="sft warm-up", disable=not accelerator.is_local_main_process):
        idx = next(batches)[rank * per_rank:(rank + 1) * per_rank]
        batch = adapter.encode([examples[i] for i in idx], [targets[i] for i in idx]).to(accelerator.device)
        if adapter_option(adapter, "sft_loss") is not None:  # e.g. masked diffusion: LLaDA's masked-token loss
            loss = adapter.sft_loss(model, batch, generator=generator)
        else:
            logp = adapter.log_probs(model, batch)
            loss = seq_mean_token_mean(-logp, batch.completion_mask.to(logp.dtype))
        accelerator.backward(loss)
        clip_gradients(accelerator, model, cfg.optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    accelerator.print(f"sft warm-up: loss {losses[0]:.3f} -> {losses[-1]:.3f} over {s.steps} steps")
    return losses
