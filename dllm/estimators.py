"""Likelihood estimators for masked diffusion LMs, selected by name, with one output contract:
per-token terms [N, C] whose sum over a completion's tokens is the estimate of log pi(y | q) (or,
for `one_step`, d1's per-token log-probs), plus per-token entropies. Masks are drawn from each
row's own seed, the inner iteration and the pass, so the old, reference and current policies are
scored on identical masks within an iteration (and micro-batching does not change them).

- `one_step` (diffu-GRPO / d1, Zhao et al. 2025, arXiv 2504.12216; dllm-reasoning/d1): the whole
  completion masked, each prompt token masked with probability `p_mask_prompt`, one forward; the
  log-softmax at each completion position is that token's log-prob. A fresh prompt mask per inner
  iteration. No 1/t weighting.
- `elbo_mc`: the sequence ELBO  E_t E_{y_t}[(1/t) sum_i 1[y_t^i = M] log p(y^i | y_t, q)]  by
  double Monte Carlo over `passes` draws of t ~ U(0, 1) and of the mask (each completion token
  masked with probability p = (1 - eps) t + eps, weight 1/p: LLaDA's forward process, eps = 1e-3
  keeps the variance finite).
- `elbo_sdmc` (GDPO, Rojas et al., arXiv 2510.08554, sec. 3): the time integral by Gauss-Legendre
  quadrature on [0, 1] with `nodes` nodes, and at each node `masks_per_node` masks of exactly
  max(1, floor(t_n L)) of the L completion tokens (uniformly chosen), weight w_n / t_n.
The ELBO estimators mask and score the completion positions marked valid (the adapter passes the
whole canvas, EOS padding included); the prompt is never scored. Dream-style models, whose position
i-1 predicts token i, need `shift_logits`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from mmrl.core.registry import Registry

ESTIMATORS = Registry("likelihood estimator")


def gauss_legendre(n: int) -> tuple[list[float], list[float]]:
    """Nodes and weights of n-point Gauss-Legendre quadrature on [0, 1] (weights sum to 1)."""
    x, w = np.polynomial.legendre.leggauss(n)
    return [float((xi + 1) / 2) for xi in x], [float(wi / 2) for wi in w]


def row_generator(seed: int, iteration: int, draw: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + iteration * 7_919 + draw * 104_729) % (2 ** 63))


def exact_k_mask(valid: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """[C] bool: k of the `valid` positions, uniformly at random."""
    positions = torch.nonzero(valid).flatten()
    chosen = positions[torch.randperm(len(positions), generator=gen)[:k]]
    out = torch.zeros_like(valid)
    out[chosen] = True
    return out


@ESTIMATORS.register("one_step")
def one_step_plan(valid: torch.Tensor, prompt_valid: torch.Tensor, seed: int, iteration: int,
                  p_mask_prompt: float = 0.15):
    """One pass: (completion mask, prompt mask, per-token weight) with the completion fully masked."""
    gen = row_generator(seed, iteration, 0)
    prompt = (torch.rand(prompt_valid.shape, generator=gen) < p_mask_prompt) & prompt_valid
    return [(torch.ones_like(valid), prompt, 1.0)]


one_step_plan.weighted = False  # the terms are log-probs of every completion token, not ELBO terms


@ESTIMATORS.register("elbo_mc")
def elbo_mc_plan(valid: torch.Tensor, prompt_valid: torch.Tensor, seed: int, iteration: int, passes: int = 4,
                 eps: float = 1e-3):
    """`passes` draws of (t, Bernoulli(p) mask), each weighted 1/(p * passes)."""
    plan = []
    for draw in range(passes):
        gen = row_generator(seed, iteration, draw)
        p = (1 - eps) * torch.rand((), generator=gen).item() + eps
        mask = (torch.rand(valid.shape, generator=gen) < p) & valid
        plan.append((mask, torch.zeros_like(prompt_valid), 1.0 / (p * passes)))
    return plan


@ESTIMATORS.register("elbo_sdmc")
def elbo_sdmc_plan(valid: torch.Tensor, prompt_valid: torch.Tensor, seed: int, iteration: int, nodes: int = 3,
                   masks_per_node: int = 1):
    """Gauss-Legendre nodes t_n, weights w_n; per node `masks_per_node` masks of max(1, floor(t_n L))
    tokens, each weighted w_n / (t_n * masks_per_node)."""
    length = int(valid.sum())
    plan = []
    for n, (t, w) in enumerate(zip(*gauss_legendre(nodes))):
        for j in range(masks_per_node):
            gen = row_generator(seed, iteration, n * masks_per_node + j)
            mask = exact_k_mask(valid, max(1, math.floor(t * length)), gen)
            plan.append((mask, torch.zeros_like(prompt_valid), w / (t * masks_per_node)))
    return plan


def estimate(model, prompt_ids, prompt_mask, completion_ids, completion_mask, seeds, iteration: int, name: str,
             params: dict, mask_token_id: int, shift_logits: bool = False, with_entropy: bool = False):
    """Per-token terms [N, C] (and entropies [N, C]) of estimator `name` for the batch's completions."""
    plan_fn = ESTIMATORS.get(name)
    weighted = getattr(plan_fn, "weighted", True)
    rows, width = completion_ids.shape
    valid = completion_mask.bool().cpu()
    prompt_valid = prompt_mask.bool().cpu()
    plans = [plan_fn(valid[r], prompt_valid[r], int(seeds[r]), iteration, **params) for r in range(rows)]
    device = completion_ids.device
    terms = torch.zeros(rows, width, device=device)
    entropy = torch.zeros(rows, width, device=device) if with_entropy else None
    seen = torch.zeros(rows, width, dtype=torch.bool, device=device)
    attention = torch.cat([prompt_mask, torch.ones_like(completion_mask)], dim=1)
    for k in range(len(plans[0])):
        c_mask = torch.stack([p[k][0] for p in plans]).to(device)
        p_mask = torch.stack([p[k][1] for p in plans]).to(device)
        weight = torch.tensor([p[k][2] for p in plans], device=device)
        canvas = torch.cat([prompt_ids.masked_fill(p_mask, mask_token_id),
                            completion_ids.masked_fill(c_mask, mask_token_id)], dim=1)
        logits = model(input_ids=canvas, attention_mask=attention).logits
        if shift_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        logp_all = torch.log_softmax(logits[:, prompt_ids.shape[1]:].float(), dim=-1)
        logp = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
        scored = c_mask if weighted else torch.ones_like(c_mask)
        terms = terms + torch.where(scored, logp * weight[:, None], torch.zeros_like(logp))
        if with_entropy:
            new = scored & ~seen
            ent = -(logp_all.exp() * logp_all).sum(-1).detach()
            entropy = torch.where(new, ent, entropy)
            seen = seen | new
    return (terms, entropy) if with_entropy else terms
