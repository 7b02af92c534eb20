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
  quadrature on [0, 1] with `nodes` nodes, and at each node `masks_per_node` masks drawn from the
  forward process at t_n (`masking`, below), weight w_n / t_n.
- `ar_exact` (JustGRPO, Ni et al., "The Flexibility Trap", arXiv 2601.15165; LeapLabTHU/JustGRPO
  grpo.py `logprob_loss`): for rollouts in left-to-right order (one token per step: block_length 1,
  steps = max_new_tokens), the exact log-likelihood log pi(y | q) = sum_t log p(y_t | q, y_<t, masks
  after t). Pass t shows the prompt, y_<t and mask tokens from t on, and scores position t alone, at
  the sampling temperature and without the mask token (which the sampler never draws): C forwards
  for a C-token canvas, as the official code. No estimate, no weights: the per-token terms are the
  behaviour policy's own log-probs, so per-token ratios, clipping and KL estimators apply as for a
  causal LM.
The ELBO estimators mask and score the completion positions marked valid (the adapter passes the
whole canvas, EOS padding included); the prompt is never scored. Dream-style models, whose position
i-1 predicts token i, need `shift_logits`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from mmrl.registry import Registry

# `weighted`: the per-token terms are ELBO terms (w / t) log p at masked positions (their sum estimates a
# sequence log-likelihood); False: they are every completion token's own log-prob
# `exact`: the terms are the rollout policy's own per-token log-probs (they use its temperature and
# exclude the mask token); a plan's weight may be a [C] tensor (0: position not scored in that pass)
ESTIMATORS = Registry("likelihood estimator", flags={"weighted": True, "exact": False})


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


ESTIMATORS.mark(one_step_plan, weighted=False)  # the terms are log-probs of every completion token, not ELBO terms


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
                   masks_per_node: int = 1, masking: str = "bernoulli"):
    """Gauss-Legendre nodes t_n, weights w_n; per node `masks_per_node` masks of the L valid positions,
    each weighted w_n / (t_n masks_per_node):
      bernoulli (default): each position masked with probability t_n, LLaDA's forward process, in which
        the paper writes the ELBO. The integrand (1/t) E[sum_masked log p | t] is a polynomial of
        degree L - 1 in t, which n-point Gauss-Legendre integrates exactly when 2n >= L: the estimate
        is then unbiased; longer completions keep a quadrature error.
      nemo: exactly max(1, round(t_n L)) positions (NVIDIA NeMo-RL's GDPO reimplementation).
    Bias (expectation / ELBO - 1) against the exact ELBO with every mask enumerated
    (benchmarks/dllm_sdmc_bias.py: a tiny model fitted to 8 answers of one prompt, L = 6 / 8 / 16
    tokens), 3 nodes: bernoulli 0.0% / -0.3% / -3.6% (0.0% from 8 nodes on); nemo -41% / -49% / -37%
    (16 nodes: +0.9% / -17% / -4.3%). A fixed count stands for the Bernoulli mixture of counts at t_n
    only when a token's log-prob varies smoothly with the masked fraction; weighting it by the
    realised fraction k / L instead of t_n did no better (-44% at L = 6, 3 nodes), and the
    max(1, floor(t_n L)) count this estimator used before gave -41% / -49% / -44%."""
    if masking not in ("bernoulli", "nemo"):
        raise ValueError(f"model.diffusion.estimator_params.masking: '{masking}' is not bernoulli or nemo")
    length = int(valid.sum())
    plan = []
    for n, (t, w) in enumerate(zip(*gauss_legendre(nodes))):
        for j in range(masks_per_node):
            gen = row_generator(seed, iteration, n * masks_per_node + j)
            if masking == "bernoulli":
                mask = (torch.rand(valid.shape, generator=gen) < t) & valid
            else:
                mask = exact_k_mask(valid, max(1, round(t * length)), gen)
            plan.append((mask, torch.zeros_like(prompt_valid), w / (t * masks_per_node)))
    return plan


@ESTIMATORS.register("ar_exact")
def ar_exact_plan(valid: torch.Tensor, prompt_valid: torch.Tensor, seed: int, iteration: int):
    """One pass per canvas position t: positions t.. masked, position t scored (weight 1 there, 0
    elsewhere). Deterministic: the seed and iteration do not enter."""
    width = len(valid)
    positions = torch.arange(width)
    no_prompt_mask = torch.zeros_like(prompt_valid)
    return [((positions >= t) & valid, no_prompt_mask, (positions == t).float()) for t in range(width)]


ESTIMATORS.mark(ar_exact_plan, weighted=False, exact=True)


def all_masks(length: int) -> torch.Tensor:
    """[2^L, L] 0/1: mask number m has position i masked where bit i of m is set."""
    return (torch.arange(2 ** length)[:, None] >> torch.arange(length)[None]) & 1


@torch.no_grad()
def mask_sums(model, prompt_ids: torch.Tensor, completion_ids: torch.Tensor, mask_token_id: int,
              shift_logits: bool = False, rows_per_forward: int = 512) -> torch.Tensor:
    """[2^L] S(M) = sum_{i in M} log p(y_i | q, y with M masked) for every mask M of one completion
    [1, L] (bit i of the index = position i masked; S(empty) = 0). A reference for short completions
    (2^L forwards: L <= 16): exact ELBOs and exact expectations of the estimators."""
    length = completion_ids.shape[1]
    bits = all_masks(length)
    sums = torch.zeros(2 ** length, dtype=torch.float64)
    device = completion_ids.device
    for lo in range(0, 2 ** length, rows_per_forward):
        masks = bits[lo:lo + rows_per_forward].bool().to(device)
        rows = len(masks)
        canvas = torch.cat([prompt_ids.expand(rows, -1), completion_ids.expand(rows, -1).masked_fill(masks, mask_token_id)], 1)
        logits = model(input_ids=canvas, attention_mask=torch.ones_like(canvas)).logits
        if shift_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        logp = torch.log_softmax(logits[:, prompt_ids.shape[1]:].double(), -1)
        picked = logp.gather(-1, completion_ids.expand(rows, -1).unsqueeze(-1)).squeeze(-1)
        sums[lo:lo + rows] = (picked * masks).sum(-1).cpu()
    return sums


def exact_elbo(sums: torch.Tensor) -> float:
    """The ELBO  E_t E_{M ~ Bernoulli(t)} [(1/t) S(M)] = sum_{M != empty} S(M) / (|M| C(L, |M|))  (the t
    integral of C(L, k) t^(k-1) (1 - t)^(L-k) is 1/k), from `mask_sums`."""
    length = int(math.log2(len(sums)))
    sizes = all_masks(length).sum(-1)
    coefficient = torch.tensor([0.0] + [1.0 / (k * math.comb(length, k)) for k in range(1, length + 1)],
                               dtype=torch.float64)
    return float((sums * coefficient[sizes]).sum())


def expected_estimate(sums: torch.Tensor, name: str, params: dict | None = None) -> float:
    """The exact expectation of estimator `name` (elbo_mc, elbo_sdmc) over its mask draws, from
    `mask_sums` of one completion: the sum over masks M of P(M) x weight x S(M)."""
    params = dict(params or {})
    length = int(math.log2(len(sums)))
    sizes = all_masks(length).sum(-1)
    mean_of_size = torch.zeros(length + 1, dtype=torch.float64).index_add(0, sizes, sums) / \
        torch.tensor([math.comb(length, k) for k in range(length + 1)], dtype=torch.float64)

    def bernoulli(t: float) -> float:  # E_{M ~ Bernoulli(t)} S(M)
        return float(sum(math.comb(length, k) * t ** k * (1 - t) ** (length - k) * mean_of_size[k]
                         for k in range(1, length + 1)))

    if name == "elbo_mc":  # p = (1 - eps) t + eps, t ~ U(0, 1): E = 1/(1 - eps) int_eps^1 (1/p) E_p S dp
        eps = params.get("eps", 1e-3)
        nodes, weights = np.polynomial.legendre.leggauss(64)
        grid = eps + (1 - eps) * (nodes + 1) / 2
        return float(sum(w / 2 * bernoulli(p) / p for p, w in zip(grid, weights)))
    if name != "elbo_sdmc":
        raise ValueError(f"expected_estimate covers elbo_mc and elbo_sdmc, not '{name}'")
    masking, total = params.get("masking", "bernoulli"), 0.0
    for t, w in zip(*gauss_legendre(params.get("nodes", 3))):
        total += w / t * (bernoulli(t) if masking == "bernoulli" else float(mean_of_size[max(1, round(t * length))]))
    return total


def estimate(model, prompt_ids, prompt_mask, completion_ids, completion_mask, seeds, iteration: int, name: str,
             params: dict, mask_token_id: int, shift_logits: bool = False, with_entropy: bool = False,
             temperature: float = 1.0):
    """Per-token terms [N, C] (and entropies [N, C]) of estimator `name` for the batch's completions.
    `temperature`: the rollout's, used by the `exact` estimators (the sampled distribution)."""
    plan_fn = ESTIMATORS.get(name)
    weighted, exact = ESTIMATORS.flag(name, "weighted"), ESTIMATORS.flag(name, "exact")
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
        weight = torch.stack([torch.as_tensor(p[k][2], dtype=torch.float32).expand(width) for p in plans]).to(device)
        canvas = torch.cat([prompt_ids.masked_fill(p_mask, mask_token_id),
                            completion_ids.masked_fill(c_mask, mask_token_id)], dim=1)
        logits = model(input_ids=canvas, attention_mask=attention).logits
        if shift_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        logits = logits[:, prompt_ids.shape[1]:].float()
        if exact:  # what the sampler drew from: tempered, never the mask token
            logits = (logits / temperature).index_fill(-1, torch.tensor([mask_token_id], device=device), float("-inf"))
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
        scored = (c_mask if weighted else torch.ones_like(c_mask)) & (weight != 0)
        terms = terms + torch.where(scored, logp * weight, torch.zeros_like(logp))
        if with_entropy:
            new = scored & ~seen
            ent = -(logp_all.exp() * logp_all.clamp(min=torch.finfo(logp_all.dtype).min)).sum(-1).detach()
            entropy = torch.where(new, ent, entropy)
            seen = seen | new
    return (terms, entropy) if with_entropy else terms
