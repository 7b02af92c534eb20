"""Policy losses, KL estimators and loss aggregations: pure functions over token tensors.

A policy loss returns a per-token loss matrix [B, T] and a stats dict; `compute` adds the
KL penalty, applies optional per-token weights and reduces with the aggregation named by its own
key. Shapes: logp, old_logp, ref_logp, mask, token_weights: [B, T]; advantages: [B] or [B, T].
"""
from __future__ import annotations

import inspect
import math

import torch

from mmrl.registry import Registry

LOSSES = Registry("policy loss", flags={
    "sequence_level": False,  # a per-sequence objective broadcast over its tokens (takes seq-mean-token-mean)
    "whole_groups": False,  # compares a group's completions: micro-batches hold whole groups
})
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


def _ratio(log_ratio: torch.Tensor, clamp: float | None) -> torch.Tensor:
    """exp(log_ratio), with the log-ratio clamped to [-clamp, clamp] first (verl's guard against an
    overflowing exp; it changes nothing below e^clamp, and past it the gradient is 0)."""
    return torch.exp(log_ratio if clamp is None else log_ratio.clamp(-clamp, clamp))


def _clip_stats(ratio, adv, low, high, mask) -> dict:
    clipped_low = (ratio < low) & (adv < 0)
    clipped_high = (ratio > high) & (adv > 0)
    return {"loss/clip_frac_low": masked_mean(clipped_low.float(), mask),
            "loss/clip_frac_high": masked_mean(clipped_high.float(), mask),
            "loss/clip_frac": masked_mean((clipped_low | clipped_high).float(), mask),
            "loss/ratio_mean": masked_mean(ratio.detach(), mask)}


@LOSSES.register("grpo")
def clipped_token_loss(logp, old_logp, advantages, mask, eps: float = 0.2, eps_high: float | None = None,
                       eps_pos: float | None = None, eps_neg: float | None = None, clip_ratio_c: float | None = None,
                       log_ratio_clamp: float | None = 20.0):
    """PPO-clip per token (GRPO, DeepSeekMath eq. 3; clip-higher from DAPO eq. 10):

    r = exp(logp - old_logp);  l = -min(r A, clip(r, 1 - eps, 1 + eps_high) A),  eps_high defaults to eps.
    Asymmetric clipping by advantage sign (NGRPO, arXiv 2509.18851, sec. 3.2): `eps_pos` is the clip
    range of tokens with A > 0 and `eps_neg` of tokens with A < 0, each clip(r, 1 -+ eps_sign).
    Since only the upper bound binds when A > 0 and only the lower when A < 0, this is the same
    update as eps_high = eps_pos, eps = eps_neg (NGRPO's script: eps_neg 0.16, eps_pos 0.24).
    Dual clip (`clip_ratio_c` = c > 1; verl's default 3, DAPO's recipe 10; off by default as in the
    GRPO paper): where A < 0, l = min(l, -c A), so a token far above its old probability cannot
    push an unbounded loss. `log_ratio_clamp`: verl's +-20 guard on logp - old_logp before exp.
    Returns (token_loss [B, T], stats)."""
    if (eps_pos is None) != (eps_neg is None):
        raise ValueError("loss_params: set both eps_pos and eps_neg (NGRPO asymmetric clipping), or neither")
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"loss_params.clip_ratio_c={clip_ratio_c}: the dual-clip bound must be > 1 (verl: 3)")
    ratio = _ratio(logp - old_logp, log_ratio_clamp)
    adv = _broadcast(advantages, logp)
    if eps_pos is not None:
        if eps_high is not None:
            raise ValueError("loss_params: eps_pos/eps_neg replace eps/eps_high; set one pair only")
        width = torch.where(adv > 0, torch.full_like(adv, eps_pos), torch.full_like(adv, eps_neg))
        low, high = 1.0 - width, 1.0 + width
    else:
        eps_high = eps if eps_high is None else eps_high
        low, high = 1.0 - eps, 1.0 + eps_high
    clipped = torch.minimum(torch.maximum(ratio, torch.as_tensor(low, dtype=ratio.dtype)),
                            torch.as_tensor(high, dtype=ratio.dtype))
    token_loss = -torch.minimum(ratio * adv, clipped * adv)
    stats = _clip_stats(ratio, adv, low, high, mask)
    if clip_ratio_c is not None:
        bound = -clip_ratio_c * adv
        dual = (adv < 0) & (token_loss > bound)
        token_loss = torch.where(dual, bound, token_loss)
        stats["loss/clip_frac_dual"] = masked_mean(dual.float(), mask)
    return token_loss, stats


@LOSSES.register("gspo")
def sequence_clipped_loss(logp, old_logp, advantages, mask, ratio_mask=None, eps: float = 3e-4,
                          eps_high: float = 4e-4, log_ratio_clamp: float | None = 10.0):
    """GSPO (Group Sequence Policy Optimization, arXiv 2507.18071, eq. 5-7):

    s_i = exp(1/|y_i| sum_t (logp - old_logp));  l_i = -min(s_i A_i, clip(s_i, 1 - eps, 1 + eps_high) A_i).
    The sequence loss is broadcast over its tokens, so `seq-mean-token-mean` gives 1/G sum_i l_i (the
    aggregation a sequence loss takes: `sequence_level`). The mean runs over `ratio_mask` [B, T] where
    an adapter sets one (IGPO's official scope: every canvas position), else over `mask`.
    `log_ratio_clamp`: verl's guard on the mean log-ratio (10). advantages: [B]. Returns (token_loss
    [B, T], stats)."""
    if advantages.dim() != 1:
        raise ValueError("gspo takes sequence-level advantages [B]")
    seq_ratio = _ratio(masked_mean(logp - old_logp, mask if ratio_mask is None else ratio_mask, dim=-1),
                       log_ratio_clamp)
    low, high = 1.0 - eps, 1.0 + eps_high
    seq_loss = -torch.minimum(seq_ratio * advantages, seq_ratio.clamp(low, high) * advantages)
    seq_mask = torch.ones_like(seq_ratio)
    return seq_loss[:, None].expand_as(logp), _clip_stats(seq_ratio, advantages, low, high, seq_mask)


@LOSSES.register("gdpo_elbo")
def elbo_ratio_loss(logp, old_logp, advantages, mask, eps: float = 0.5, eps_high: float | None = None,
                    length_normalized: bool = True, log_ratio_clamp: float | None = 20.0):
    """GDPO's sequence-level loss (Rojas et al., "Group Diffusion Policy Optimization", arXiv
    2510.08554, sec. 4) on a sequence log-likelihood estimate: with D_i = sum_t (logp - old_logp),
    the ELBO difference when the terms are an ELBO estimator's (dllm.estimators),
        length_normalized (default):  r_i = exp(D_i / |y_i|),  l_i = -min(r_i A_i, clip(r_i) A_i)
        otherwise:                    r_i = exp(D_i),          l_i = -min(r_i A_i, clip(r_i) A_i) / |y_i|
    clip to [1 - eps, 1 + eps_high] (eps_high defaults to eps). The paper (as summarised) writes the
    second form; NVIDIA NeMo-RL's reimplementation, which says it follows the reference code, the
    first, which cannot overflow on long completions. Broadcast over tokens (seq-mean-token-mean:
    `sequence_level`). `log_ratio_clamp` bounds the exponent. Returns (token_loss [B, T], stats)."""
    if advantages.dim() != 1:
        raise ValueError("gdpo_elbo takes sequence-level advantages [B]")
    diff = ((logp - old_logp) * mask).sum(-1)
    length = mask.sum(-1).clamp(min=1)
    ratio = _ratio(diff / length if length_normalized else diff, log_ratio_clamp)
    low, high = 1.0 - eps, 1.0 + (eps if eps_high is None else eps_high)
    seq_loss = -torch.minimum(ratio * advantages, ratio.clamp(low, high) * advantages)
    if not length_normalized:
        seq_loss = seq_loss / length
    return seq_loss[:, None].expand_as(logp), _clip_stats(ratio, advantages, low, high, torch.ones_like(ratio))


@LOSSES.register("sapo")
def soft_gated_loss(logp, old_logp, advantages, mask, tau_pos: float = 1.0, tau_neg: float = 1.05,
                    log_ratio_clamp: float | None = 20.0):
    """SAPO (Soft Adaptive Policy Optimization, arXiv 2511.20347, eq. 6-8): a sigmoid gate instead of
    the hard clip.  f(r) = 4/tau * sigmoid(tau (r - 1));  l = -f(r) A;  tau = tau_pos if A > 0 else tau_neg.

    d f / d r = 4 s (1 - s) equals 1 at r = 1 (on-policy it is the plain policy gradient) and decays
    smoothly off-policy. Nothing is clipped, so the clip stats are 0. The paper averages per sequence
    then over sequences (seq-mean-token-mean: `sequence_level`). Returns (token_loss [B, T], stats)."""
    ratio = _ratio(logp - old_logp, log_ratio_clamp)
    adv = _broadcast(advantages, logp)
    tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))
    gate = 4.0 / tau * torch.sigmoid(tau * (ratio - 1.0))
    return -gate * adv, _clip_stats(ratio, adv, -float("inf"), float("inf"), mask)


@LOSSES.register("cispo")
def clipped_is_weight_loss(logp, old_logp, advantages, mask, eps_low: float = 1.0, eps_high: float = 0.28,
                           log_ratio_clamp: float | None = 20.0):
    """CISPO (MiniMax-M1, arXiv 2506.13585, eq. 4-5): clip the importance weight, not the update.

    l = -sg(clip(r, 1 - eps_low, 1 + eps_high)) A log pi(y_t). Every token keeps a gradient (a
    clipped ratio only caps its weight); the paper sets no lower bound (eps_low = 1) and tunes eps_high.
    Use with token-mean aggregation as in the paper. Returns (token_loss [B, T], stats)."""
    ratio = _ratio(logp - old_logp, log_ratio_clamp)
    adv = _broadcast(advantages, logp)
    low, high = 1.0 - eps_low, 1.0 + eps_high
    weight = ratio.clamp(low, high).detach()
    stats = _clip_stats(ratio, adv, low, high, mask)
    stats["loss/clip_frac"] = masked_mean(((ratio > high) | (ratio < low)).float(), mask)
    return -weight * adv * logp, stats


@LOSSES.register("reg_grpo")
def regression_grpo_loss(logp, old_logp, advantages, mask, group_ids, min_std: float = 1e-6):
    """Reg-GRPO (DeepVideo-R1, Park et al., arXiv 2506.07464, sec. 3.2): regress the group-normalised
    advantage on the group-normalised sequence log-ratio of policy to old policy,
        rho_i = sum_t (log pi(o_it) - log pi_old(o_it)),   A^theta_i = (rho_i - mean_G rho) / std_G rho,
        L = mean_i (A_i - A^theta_i)^2   (+ beta KL per token, added by `compute`),
    with no ratio clipping and no min. std is unbiased (as the GRPO advantage). Guard: where a group's
    std of rho is below `min_std` (every first inner step, where pi = pi_old and all rho are 0) the
    std is replaced by the constant 1, so A^theta = rho - mean rho and the gradient there is
    -(2/B) sum_i A_i grad(log pi(o_i)) (a sequence-level policy gradient) instead of 0/0.
    Each sequence's squared error is spread over its tokens: use aggregation seq-mean-token-mean,
    and micro-batches of whole groups (`whole_groups`). Returns ([B, T] loss, stats)."""
    if advantages.dim() != 1:
        raise ValueError("reg_grpo takes sequence-level advantages [B]")
    rho = ((logp - old_logp) * mask).sum(-1)
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    n = counts.to(rho.dtype)
    mean = torch.zeros_like(n).index_add(0, inverse, rho)[inverse] / n[inverse]
    centred = rho - mean
    var = torch.zeros_like(n).index_add(0, inverse, centred ** 2)[inverse] / (n[inverse] - 1).clamp(min=1)
    guarded = var.detach() < min_std ** 2
    std = torch.sqrt(torch.where(guarded, torch.ones_like(var), var))  # sqrt after where: no NaN gradient
    predicted = centred / std
    error = (advantages - predicted) ** 2
    stats = {"reg_grpo/error": error.detach().mean(), "reg_grpo/guarded_frac": guarded.float().mean(),
             "reg_grpo/predicted_abs": predicted.detach().abs().mean()}
    return error[:, None] * torch.ones_like(logp), stats


LOSSES.mark(regression_grpo_loss, whole_groups=True)
# Losses of whole sequences broadcast over their tokens (or, for sapo, averaged per sequence by the
# paper): a token-level aggregation would weight each sequence by its length.
for _loss in (sequence_clipped_loss, elbo_ratio_loss, soft_gated_loss, regression_grpo_loss):
    LOSSES.mark(_loss, sequence_level=True)


@LOSSES.register("disco")
def discriminative_loss(logp, old_logp, advantages, mask, group_ids, num_groups=None, num_tokens=None,
                        score: str = "log_l", tau: float | None = None, dro: bool = True,
                        delta: float = 1e-4, constraint_beta: float = 1e3):
    """DisCO (Discriminative Constrained Optimization, arXiv 2505.12366, eq. 10-13; official code
    Optimization-AI/DisCO `compute_policy_loss_disco_logL` / `_Lratio` / `_discob_*`).

    Per question q with correct answers O+ and incorrect O- (here: the completions with positive /
    negative advantage, which for a binary reward and any mean-centred estimator are exactly the
    correct / incorrect answers of a mixed group; other groups contribute 0 and still count in the
    denominator):
      DisCO-b (dro=False): J_q = mean_{O+} s - mean_{O-} s
      DisCO   (dro=True):  J_q = mean_{O+} s - tau log mean_{O-} exp(s / tau)
    with the score s(o) = 1/|o| sum_t log pi(o_t) ('log_l', tau 10) or 1/|o| sum_t r_t ('l_ratio', tau 1).
    loss = -(1/N_q) sum_q J_q + [b (KL - delta)]_+ KL,   KL = token-mean (log pi_old - log pi), b = constraint_beta,
    whose gradient is that of the paper's (b/2) [KL - delta]_+^2 (the code's form). The
    constraint coefficient uses this micro-batch's KL (detached). No clipping, no advantage scaling.
    Needs whole groups in each micro-batch. Returns (scalar loss, stats)."""
    if score not in ("log_l", "l_ratio"):
        raise ValueError(f"loss_params.score: '{score}' is not 'log_l' or 'l_ratio'")
    tau = (10.0 if score == "log_l" else 1.0) if tau is None else tau
    if advantages.dim() != 1:
        raise ValueError("disco takes sequence-level advantages [B]")
    values = logp if score == "log_l" else torch.exp(logp - old_logp)
    scores = masked_mean(values, mask, dim=-1)
    objective = scores.new_zeros(())
    contrastive = 0
    for g in torch.unique(group_ids):
        rows = group_ids == g
        pos, neg = scores[rows & (advantages > 0)], scores[rows & (advantages < 0)]
        if len(pos) == 0 or len(neg) == 0:
            continue
        contrastive += 1
        if dro:
            neg_term = tau * (torch.logsumexp(neg / tau, 0) - math.log(len(neg)))
        else:
            neg_term = neg.mean()
        objective = objective + pos.mean() - neg_term
    groups = len(torch.unique(group_ids)) if num_groups is None else num_groups
    kl_tokens = (old_logp - logp) * mask
    kl_local = kl_tokens.sum() / mask.sum().clamp(min=1)
    coefficient = torch.clamp(constraint_beta * (kl_local.detach() - delta), min=0.0)
    kl_share = kl_tokens.sum() / (mask.sum() if num_tokens is None else num_tokens)
    loss = -objective / groups + coefficient * kl_share
    stats = {"disco/objective": objective.detach() / groups, "disco/kl": kl_local.detach(),
             "disco/constraint_coef": coefficient, "disco/contrastive_groups": torch.tensor(float(contrastive))}
    return loss, stats


LOSSES.mark(discriminative_loss, whole_groups=True)


def llds_gate(logp, old_logp, mask, advantages, nonneg_advantage: bool = True) -> torch.Tensor:
    """[B, T] bool: the tokens LLDS penalises (see `likelihood_displacement_penalty`)."""
    fell = masked_mean(logp.detach(), mask, -1) < masked_mean(old_logp, mask, -1)
    if nonneg_advantage:
        seq_adv = advantages if advantages.dim() == 1 else masked_mean(advantages, mask, -1)
        fell = fell & (seq_adv >= 0)
    return fell[:, None] & (logp.detach() < old_logp) & mask.bool()


def likelihood_displacement_penalty(logp, old_logp, mask, advantages, nonneg_advantage: bool = True,
                                    active_tokens: float | None = None):
    """LLDS regulariser (On GRPO Collapse in Search-R1, arXiv 2512.04220, sec. 4; official code not
    public, gating as in the public verl port): active only on responses whose mean log-likelihood
    fell below the behaviour policy's, and there only on the tokens whose likelihood fell:

    L = sum_{i,t} g_i g_{i,t} (log pi_old - log pi) / sum_{i,t} g_i g_{i,t},
    g_i = 1[mean_t log pi < mean_t log pi_old] (and A_i >= 0 if `nonneg_advantage`), g_{i,t} = 1[log pi < log pi_old].
    The sums run over the whole optimizer batch: `active_tokens` is its gate count (over every
    micro-batch and rank, divided by the number of ranks, as the other denominators); without it,
    this call's own count. On-policy (the first update on a batch) it is 0. Returns (penalty, this
    call's number of active tokens)."""
    gate = llds_gate(logp, old_logp, mask, advantages, nonneg_advantage)
    active = gate.sum()
    denom = active.clamp(min=1) if active_tokens is None else max(float(active_tokens), 1.0)
    return ((old_logp - logp) * gate).sum() / denom, active


CONTEXT_ARGS = ("group_ids", "num_groups", "num_tokens", "ratio_mask")


def compute(name: str, logp, old_logp, advantages, mask, ref_logp=None, *,
            aggregation: str = "seq-mean-token-mean", beta: float = 0.0, kl_estimator: str = "k3",
            kl_clamp: float | None = None, token_weights: torch.Tensor | None = None, weights_scale_kl: bool = False,
            max_len: int | None = None, num_seqs: float | None = None, num_tokens: float | None = None,
            group_ids: torch.Tensor | None = None, num_groups: float | None = None,
            ratio_mask: torch.Tensor | None = None, llds_coef: float = 0.0, llds_nonneg_advantage: bool = True,
            llds_tokens: float | None = None, llds_advantages: torch.Tensor | None = None, **params):
    """Scalar loss and stats for the policy loss registered as `name`.

    loss = aggregate(w * l_policy + beta * KL_est(logp, ref_logp), mask) + llds_coef * L_LLDS;
    KL is added per token (DeepSeekMath), not folded into the reward (for that, the trainer's
    `kl_penalty: reward`). Token weights scale the policy term only, as TRL applies its entropy mask
    before adding the KL; `weights_scale_kl` also scales the KL term (TW-GRPO's official code weights
    the whole per-token loss). `kl_clamp` clamps each KL estimate to [-c, c] (verl clamps k3 at 10;
    off by default, as DeepSeekMath and TRL). `num_seqs` / `num_tokens` / `num_groups` /
    `llds_tokens` are the whole optimizer batch's denominators (see the aggregations), which makes
    the gradient independent of how the batch is split over micro-batches and ranks. A loss that
    returns a scalar (disco) is already normalised and takes no KL term or token weights. LLDS gates
    responses on `llds_advantages` (the responses' own advantages; default `advantages`)."""
    mask = mask.to(logp.dtype)
    fn = LOSSES.get(name)
    accepted = inspect.signature(fn).parameters
    context = {"group_ids": group_ids, "num_groups": num_groups, "num_tokens": num_tokens, "ratio_mask": ratio_mask}
    token_loss, stats = fn(logp, old_logp, advantages, mask,
                           **{k: v for k, v in context.items() if k in accepted}, **params)
    if token_loss.dim() == 0:
        if beta > 0 or token_weights is not None:
            raise ValueError(f"loss '{name}' is a whole-sequence objective: it takes no KL term (beta) "
                             "and no token weighting")
        loss = token_loss
    else:
        kl = None
        if ref_logp is not None:
            kl = KL_ESTIMATORS.get(kl_estimator)(logp, ref_logp)
            if kl_clamp is not None:
                kl = kl.clamp(-kl_clamp, kl_clamp)
            stats["kl/mean"] = masked_mean(kl.detach(), mask)
        elif beta > 0:
            raise ValueError("beta > 0 needs ref_logp (the trainer keeps a reference model when beta > 0)")
        if token_weights is not None:
            token_loss = token_loss * token_weights
        if beta > 0:
            token_loss = token_loss + beta * (kl * token_weights if weights_scale_kl and token_weights is not None
                                              else kl)
        loss = AGGREGATIONS.get(aggregation)(token_loss, mask, num_seqs=num_seqs, num_tokens=num_tokens,
                                             max_len=max_len)
    if llds_coef > 0:
        penalty, active = likelihood_displacement_penalty(
            logp, old_logp, mask, advantages if llds_advantages is None else llds_advantages, llds_nonneg_advantage,
            active_tokens=llds_tokens)
        loss = loss + llds_coef * penalty
        stats["llds/penalty"], stats["llds/active_tokens"] = penalty, active.float()
    return loss, {k: torch.as_tensor(v).detach() for k, v in stats.items()}
