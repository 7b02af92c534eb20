"""Policy losses, KL estimators and loss aggregations: pure functions over token tensors.

A policy loss returns a per-token loss matrix [B, T] and a stats dict; `compute` adds the
KL penalty, applies optional per-token weights and reduces with the aggregation named by its own
key. Shapes: logp, old_logp, ref_logp, mask, token_weights: [B, T]; advantages: [B] or [B, T].
"""
from __future__ import annotations

import torch

from mmrl.core.registry import Registry

LOSSES = Registry("policy loss")
AGGREGATIONS = Registry("loss aggregation")
KL_ESTIMATORS = Registry("KL estimator")


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


# ---------------------------------------------------------------- KL estimators (Schulman 2020)
@KL_ESTIMATORS.register("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref (unbiased, high variance)."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = 1/2 (log pi - log pi_ref)^2."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 (DeepSeekMath eq. 4) = pi_ref/pi - log(pi_ref/pi) - 1 = exp(ref - logp) - (ref - logp) - 1."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


# ---------------------------------------------------------------- aggregations
@AGGREGATIONS.register("token-mean")
def token_mean(token_loss, mask, num_seqs=None, num_tokens=None, max_len=None) -> torch.Tensor:
    """DAPO (arXiv 2503.14476, eq. 12): sum_{i,t} l / sum_i |y_i|.

    `num_tokens` is the denominator of the whole optimizer batch (all micro-batches and ranks,
    divided by world size); without it the local token count is used."""
    denom = mask.sum() if num_tokens is None else num_tokens
    return (token_loss * mask).sum() / denom


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(token_loss, mask, num_seqs=None, num_tokens=None, max_len=None) -> torch.Tensor:
    """GRPO (DeepSeekMath eq. 3): 1/G sum_i 1/|y_i| sum_t l_{i,t}."""
    per_seq = (token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / (mask.shape[0] if num_seqs is None else num_seqs)


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(token_loss, mask, num_seqs=None, num_tokens=None, max_len=None) -> torch.Tensor:
    """BNPO recipe: 1/G sum_i sum_t l_{i,t}."""
    return (token_loss * mask).sum() / (mask.shape[0] if num_seqs is None else num_seqs)


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(token_loss, mask, num_seqs=None, num_tokens=None, max_len=None) -> torch.Tensor:
    """Dr. GRPO (arXiv 2503.20783, eq. 7): sum_{i,t} l / (G * L_max), L_max a constant."""
    if max_len is None:
        raise ValueError("aggregation 'seq-mean-token-sum-norm' needs max_len (the max completion length)")
    return (token_loss * mask).sum() / ((mask.shape[0] if num_seqs is None else num_seqs) * max_len)


# ---------------------------------------------------------------- policy losses
def _broadcast(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return advantages[:, None].expand_as(like) if advantages.dim() == 1 else advantages


def _clip_stats(ratio, adv, low, high, mask) -> dict:
    clipped_low = (ratio < low) & (adv < 0)
    clipped_high = (ratio > high) & (adv > 0)
    return {"clip_frac_low": masked_mean(clipped_low.float(), mask),
            "clip_frac_high": masked_mean(clipped_high.float(), mask),
            "clip_frac": masked_mean((clipped_low | clipped_high).float(), mask),
            "ratio_mean": masked_mean(ratio.detach(), mask)}


@LOSSES.register("grpo")
def clipped_token_loss(logp, old_logp, advantages, mask, eps: float = 0.2, eps_high: float | None = None):
    """PPO-clip per token (GRPO, DeepSeekMath eq. 3; clip-higher from DAPO eq. 10):

    r = exp(logp - old_logp);  l = -min(r A, clip(r, 1 - eps, 1 + eps_high) A),  eps_high defaults to eps.
    Returns (token_loss [B, T], stats)."""
    eps_high = eps if eps_high is None else eps_high
    ratio = torch.exp(logp - old_logp)
    adv = _broadcast(advantages, logp)
    low, high = 1.0 - eps, 1.0 + eps_high
    token_loss = -torch.minimum(ratio * adv, ratio.clamp(low, high) * adv)
    return token_loss, _clip_stats(ratio, adv, low, high, mask)


@LOSSES.register("gspo")
def sequence_clipped_loss(logp, old_logp, advantages, mask, eps: float = 3e-4, eps_high: float = 4e-4):
    """GSPO (Group Sequence Policy Optimization, arXiv 2507.18071, eq. 5-7):

    s_i = exp(1/|y_i| sum_t (logp - old_logp));  l_i = -min(s_i A_i, clip(s_i, 1 - eps, 1 + eps_high) A_i).
    The sequence loss is broadcast over its tokens, so `seq-mean-token-mean` gives 1/G sum_i l_i.
    advantages: [B]. Returns (token_loss [B, T], stats)."""
    if advantages.dim() != 1:
        raise ValueError("gspo takes sequence-level advantages [B]")
    seq_ratio = torch.exp(masked_mean(logp - old_logp, mask, dim=-1))
    low, high = 1.0 - eps, 1.0 + eps_high
    seq_loss = -torch.minimum(seq_ratio * advantages, seq_ratio.clamp(low, high) * advantages)
    seq_mask = torch.ones_like(seq_ratio)
    return seq_loss[:, None].expand_as(logp), _clip_stats(seq_ratio, advantages, low, high, seq_mask)


@LOSSES.register("sapo")
def soft_gated_loss(logp, old_logp, advantages, mask, tau_pos: float = 1.0, tau_neg: float = 1.05):
    """SAPO (Soft Adaptive Policy Optimization, arXiv 2511.20347, eq. 6-8): a sigmoid gate instead of
    the hard clip.  f(r) = 4/tau * sigmoid(tau (r - 1));  l = -f(r) A;  tau = tau_pos if A > 0 else tau_neg.

    d f / d r = 4 s (1 - s) equals 1 at r = 1 (on-policy it is the plain policy gradient) and decays
    smoothly off-policy. Nothing is clipped, so the clip stats are 0. Returns (token_loss [B, T], stats)."""
    ratio = torch.exp(logp - old_logp)
    adv = _broadcast(advantages, logp)
    tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))
    gate = 4.0 / tau * torch.sigmoid(tau * (ratio - 1.0))
    return -gate * adv, _clip_stats(ratio, adv, -float("inf"), float("inf"), mask)


def compute(name: str, logp, old_logp, advantages, mask, ref_logp=None, *,
            aggregation: str = "seq-mean-token-mean", beta: float = 0.0, kl_estimator: str = "k3",
            token_weights: torch.Tensor | None = None, max_len: int | None = None,
            num_seqs: float | None = None, num_tokens: float | None = None, **params):
    """Scalar loss and stats for the policy loss registered as `name`.

    loss = aggregate(w * (l_policy + beta * KL_est(logp, ref_logp)), mask); KL is added per token
    (DeepSeekMath), not folded into the reward. `num_seqs` / `num_tokens` are the whole optimizer
    batch's denominators (see the aggregations), which makes the gradient independent of how the
    batch is split over micro-batches and ranks."""
    mask = mask.to(logp.dtype)
    token_loss, stats = LOSSES.get(name)(logp, old_logp, advantages, mask, **params)
    if ref_logp is not None:
        kl = KL_ESTIMATORS.get(kl_estimator)(logp, ref_logp)
        stats["kl"] = masked_mean(kl.detach(), mask)
        if beta > 0:
            token_loss = token_loss + beta * kl
    elif beta > 0:
        raise ValueError("beta > 0 needs ref_logp (the trainer keeps a reference model when beta > 0)")
    if token_weights is not None:
        token_loss = token_loss * token_weights
    loss = AGGREGATIONS.get(aggregation)(token_loss, mask, num_seqs=num_seqs, num_tokens=num_tokens, max_len=max_len)
    return loss, {k: v.detach() for k, v in stats.items()}
