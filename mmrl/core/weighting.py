"""Token weighting schemes, composable with any per-token policy loss: the `TokenWeighting` protocol
below (a scheme subclasses `TokenWeightingDefaults` for the flags it does not set). Select one with
`algorithm.token_weighting: <name>` and `algorithm.token_weighting_params`.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch

from mmrl.core.batch import RolloutBatch, group_starts
from mmrl.core.losses import masked_mean
from mmrl.registry import Registry

WEIGHTINGS = Registry("token weighting")


class TokenWeighting(Protocol):
    """What the trainer calls on a token weighting scheme."""
    needs_logits: bool  # apply() also gets the micro-batch's logits and group ids (computed in the loss's forward)
    whole_groups: bool  # micro-batches must hold whole groups (the weights compare a group's completions)
    scales_kl: bool  # the weights also multiply the KL term (by default they scale the policy term only)

    def prepare(self, batch: RolloutBatch, completion_logits=None) -> None:
        """Once per step, on the rank's whole batch after the advantages are known (may set
        batch.token_weights [N, C]); completion_logits(rows) gives the current policy's [rows, C, V]
        logits, no gradient."""

    def apply(self, advantages, entropy, mask, token_weights, **context):
        """Per micro-batch at loss time, with the current policy's per-token entropy [B, T] (detached);
        returns (advantages, token_weights, stats)."""


class TokenWeightingDefaults:
    """The optional flags of `TokenWeighting`, with their defaults."""
    needs_logits = False
    whole_groups = False
    scales_kl = False


def make(name: str | None, params: dict | None = None):
    """The scheme registered as `name` built with `params`, or None for no weighting."""
    return None if name is None else WEIGHTINGS.get(name)(**(params or {}))


def _matching_runs(a: torch.Tensor, b: torch.Tensor, len_a: int, len_b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks over a's and b's positions of the leading run of equal tokens (from position 0) and of
    the trailing run aligned at each sequence's end."""
    run_a, run_b = torch.zeros(a.shape, dtype=torch.long), torch.zeros(b.shape, dtype=torch.long)
    n = min(len_a, len_b)
    lead = torch.cumprod((a[:n] == b[:n]).long(), 0)
    tail = torch.cumprod((a[len_a - n:len_a].flip(0) == b[len_b - n:len_b].flip(0)).long(), 0).flip(0)
    run_a[:n] += lead
    run_b[:n] += lead
    run_a[len_a - n:len_a] += tail
    run_b[len_b - n:len_b] += tail
    return run_a, run_b


@WEIGHTINGS.register("gtpo")
class ConflictTokenWeighting(TokenWeightingDefaults):
    """GTPO (Group-relative Trajectory-based Policy Optimization, arXiv 2508.03772, sec. 3; official
    code winstonsmith1897/GTPO gtpo/gtpo_training.py `build_conflict_mask`).

    Conflict tokens: the same token id at the same position in a positive-advantage and a
    negative-advantage completion of one group. Their negative update is skipped (weight 0 in the
    negative completion) and their positive update amplified (weight `positive_weight`, 2 in the
    code); other tokens keep weight 1. `conflicts='positions'` compares every position (the paper's
    definition); `'runs'` only the leading run from position 0 and the run aligned at the ends, with
    the two weights multiplied where they overlap (the official code).
    Entropy filter and shaping (code form): with <H>_i the completion's token-mean entropy under the
    current policy, A_i <- A_i - gamma <H>_i if <H>_i <= entropy_threshold (0.7 ~ ln 2), else A_i <- 0.
    Not reproduced: the code also divides each completion's loss by its conflict-token count, which
    is absent from the paper's objective. GTPO uses no KL term (set algorithm.beta: 0)."""

    def __init__(self, positive_weight: float = 2.0, entropy_threshold: float = 0.7, gamma: float = 0.1,
                 conflicts: str = "positions"):
        if conflicts not in ("positions", "runs"):
            raise ValueError(f"token_weighting_params.conflicts: '{conflicts}' is not 'positions' or 'runs'")
        self.positive_weight, self.entropy_threshold, self.gamma = positive_weight, entropy_threshold, gamma
        self.conflicts = conflicts

    def conflict_weights(self, completion_ids, completion_mask, group_ids, advantages) -> torch.Tensor:
        """[N, C] weights: positive_weight / 0 on conflict tokens of positive / negative completions."""
        ids, mask = completion_ids.cpu(), completion_mask.cpu().bool()
        adv, groups = advantages.detach().cpu(), group_ids.cpu()
        weights = torch.ones(ids.shape, dtype=torch.float32)
        lengths = mask.sum(-1)
        for g in torch.unique(groups):
            pos = torch.nonzero((groups == g) & (adv > 0)).flatten()
            neg = torch.nonzero((groups == g) & (adv < 0)).flatten()
            if len(pos) == 0 or len(neg) == 0:
                continue
            if self.conflicts == "positions":
                same = (ids[pos][:, None] == ids[neg][None]) & mask[pos][:, None] & mask[neg][None]  # [P, Q, C]
                weights[pos] = torch.where(same.any(1), self.positive_weight, weights[pos])
                weights[neg] = torch.where(same.any(0), 0.0, weights[neg])
                continue
            hit_pos = torch.zeros(len(pos), ids.shape[1], dtype=torch.long)
            hit_neg = torch.zeros(len(neg), ids.shape[1], dtype=torch.long)
            for a, i in enumerate(pos.tolist()):
                for b, j in enumerate(neg.tolist()):
                    run_i, run_j = _matching_runs(ids[i], ids[j], int(lengths[i]), int(lengths[j]))
                    hit_pos[a] = torch.maximum(hit_pos[a], run_i)
                    hit_neg[b] = torch.maximum(hit_neg[b], run_j)
            # a position in both runs counts twice: forward weight x backward weight
            weights[pos] = torch.where(hit_pos > 0, self.positive_weight ** hit_pos.float(), weights[pos])
            weights[neg] = torch.where(hit_neg > 0, 0.0, weights[neg])
        return weights * mask

    def prepare(self, batch: RolloutBatch, completion_logits=None) -> None:
        weights = self.conflict_weights(batch.completion_ids, batch.completion_mask, batch.group_ids,
                                        batch.advantages).to(batch.completion_mask.device)
        batch.token_weights = weights if batch.token_weights is None else batch.token_weights * weights

    def apply(self, advantages, entropy, mask, token_weights):
        mean_entropy = masked_mean(entropy, mask, dim=-1)
        kept = mean_entropy <= self.entropy_threshold
        shaped = torch.where(kept, advantages - self.gamma * mean_entropy, torch.zeros_like(advantages))
        conflict = ((token_weights != 1) & mask.bool()).float() if token_weights is not None else torch.zeros_like(mask)
        return shaped, token_weights, {"gtpo/kept_frac": kept.float().mean(),
                                       "gtpo/conflict_token_frac": masked_mean(conflict, mask)}


@WEIGHTINGS.register("entropy_topk")
class EntropyAdvantageTopK(TokenWeightingDefaults):
    """Token-level down-sampling of D^3S (Dynamic Dual-level Down-Sampling, arXiv 2509.22115, sec. 3.2;
    no official code): keep the `fraction` of valid tokens with the largest |A_i| * H_{i,t} (H the
    current policy's entropy at the token) and drop the rest from the loss. With a constant |A|
    this is the high-entropy-minority selection (80/20, arXiv 2506.01939). The top-k is taken per
    micro-batch; dropped tokens still count in the aggregation's denominators."""

    def __init__(self, fraction: float = 0.2):
        if not 0 < fraction <= 1:
            raise ValueError(f"token_weighting_params.fraction: {fraction} must be in (0, 1]")
        self.fraction = fraction

    def prepare(self, batch: RolloutBatch, completion_logits=None) -> None:
        return None

    def apply(self, advantages, entropy, mask, token_weights):
        adv = advantages[:, None].expand_as(entropy) if advantages.dim() == 1 else advantages
        valid = mask.bool()
        score = torch.where(valid, adv.abs() * entropy, torch.full_like(entropy, -float("inf")))
        k = max(1, math.ceil(self.fraction * int(valid.sum())))
        keep = torch.zeros_like(valid)
        keep.view(-1)[torch.topk(score.flatten(), k).indices] = True
        keep &= valid
        weights = keep.to(mask.dtype) if token_weights is None else token_weights * keep.to(mask.dtype)
        return advantages, weights, {"entropy_topk/kept_frac": masked_mean(keep.float(), mask)}


def position_divergence(logits: torch.Tensor, mask: torch.Tensor, clamp: float = 11.0) -> torch.Tensor:
    """s_t [width] of TW-GRPO for one group (see group_divergence_weights), width = the group's
    longest completion."""
    v = logits.shape[-1]
    width = int(mask.sum(-1).max())
    logp = torch.log_softmax(logits[:, :width].float(), dim=-1)
    logp = torch.where(mask[:, :width, None].bool(), logp, torch.full_like(logp, -math.log(v)))
    d = (logp.mean(0, keepdim=True) - logp).clamp(-clamp, clamp)
    return (torch.expm1(d) - d).sum(-1).mean(0)


def group_divergence_weights(logits: torch.Tensor, mask: torch.Tensor, alpha: float = 1.7,
                             clamp: float = 11.0, divergence: torch.Tensor | None = None) -> torch.Tensor:
    """TW-GRPO token weights of one group ("Reinforcing Video Reasoning with Focused Thinking",
    Dang et al., arXiv 2505.24718, sec. III-B; official code longmalongma/TW-GRPO
    `compute_token_importance_kl_logs_uniform`).

    logits, mask: [G, T, V], [G, T] for the G completions of one prompt, positions aligned by index.
      l_{i,t,v} = log softmax(logits); past a completion's end, l = -log V (uniform);
      m_{t,v}   = (1/G) sum_i l_{i,t,v};  d = clamp(m - l, -11, 11);
      s_t       = (1/G) sum_i sum_v (exp(d) - d - 1);
      s^_t      = (s_t - min s) / (max s - min s + 1e-8) over t < the group's longest completion;
      w_{i,t}   = (1 + (alpha - 1) s^_t) * mask_{i,t}  in [1, alpha] on real tokens.
    Positions where the group's completions disagree most get the largest weight. `divergence`:
    s_t when already computed."""
    g, t, _ = logits.shape
    if not mask.numel() or int(mask.sum(-1).max()) == 0:
        return torch.zeros_like(mask, dtype=torch.float32)
    s = position_divergence(logits, mask, clamp) if divergence is None else divergence
    s_hat = (s - s.min()) / (s.max() - s.min() + 1e-8)
    weights = torch.zeros(g, t, dtype=torch.float32, device=logits.device)
    weights[:, :len(s)] = 1.0 + (alpha - 1.0) * s_hat
    return weights * mask.float()


@WEIGHTINGS.register("tw_grpo")
class TokenDivergenceWeighting(TokenWeightingDefaults):
    """TW-GRPO token weighting (see group_divergence_weights).

    detach=True (default): computed once per step from the policy before the update and held fixed
    through the inner updates, the weights are constants of the loss.
    detach=False reproduces the official code, where the weights are computed inside the loss's
    forward from the current policy and stay attached to the graph, adding a gradient through the
    full-vocabulary divergence; micro-batches then hold whole groups.
    Pair with algorithm.aggregation: token-mean (the code's sum of w * loss over all tokens / number
    of tokens), loss grpo with eps 0.2 / eps_high 0.28 and beta 0 (configs/methods/tw_grpo.yaml).
    With beta > 0 the weights scale the KL term too (`scales_kl`), as the official code multiplies
    the whole per-token loss (policy term minus beta KL) by them; the other schemes leave the KL
    term unweighted, as TRL adds it after its entropy mask."""

    scales_kl = True

    def __init__(self, alpha: float = 1.7, detach: bool = True):
        if alpha < 1:
            raise ValueError(f"token_weighting_params.alpha={alpha} must be >= 1 (weights in [1, alpha])")
        self.alpha, self.detach = alpha, detach
        self.needs_logits = self.whole_groups = not detach
        self.last_stats: dict = {}

    def group_weights(self, logits, mask, group_ids) -> torch.Tensor:
        starts = group_starts(group_ids).tolist() + [len(group_ids)]
        return torch.cat([group_divergence_weights(logits[a:b], mask[a:b], self.alpha)
                          for a, b in zip(starts[:-1], starts[1:])])

    def _stats(self, weights, mask) -> dict:
        real = mask.bool()
        return {"tw_grpo/weight_mean": float(weights[real].mean()), "tw_grpo/weight_max": float(weights[real].max())}

    @torch.no_grad()
    def prepare(self, batch: RolloutBatch, completion_logits=None) -> None:
        if not self.detach:
            return
        if completion_logits is None:
            raise ValueError("token_weighting tw_grpo needs the adapter's completion_logits")
        weights = torch.zeros(batch.completion_mask.shape, dtype=torch.float32)
        starts = group_starts(batch.group_ids).tolist() + [len(batch)]
        peaks = []
        for a, b in zip(starts[:-1], starts[1:]):
            group = batch.select(torch.arange(a, b))
            logits = completion_logits(group)
            s = position_divergence(logits, group.completion_mask)
            weights[a:b] = group_divergence_weights(logits, group.completion_mask, self.alpha, divergence=s).cpu()
            peaks.append(float(s.max()))
        base = batch.token_weights.cpu() if batch.token_weights is not None else 1.0
        batch.token_weights = (weights * base).to(batch.completion_mask.device)
        # the un-normalised divergence falls as a group's completions come to agree
        self.last_stats = {**self._stats(weights, batch.completion_mask.cpu()),
                           "tw_grpo/divergence_max": sum(peaks) / len(peaks)}

    def apply(self, advantages, entropy, mask, token_weights, logits=None, group_ids=None):
        if self.detach:
            return advantages, token_weights, dict(self.last_stats)
        weights = self.group_weights(logits, mask, group_ids)  # attached: gradient flows through them
        stats = self._stats(weights.detach(), mask)
        return advantages, weights if token_weights is None else weights * token_weights, stats
