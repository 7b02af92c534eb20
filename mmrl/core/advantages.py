"""Advantage estimators: pure functions (rewards, group ids) -> advantages [N], registered by name.

`compute` is the one call site the trainer uses. Rewards come as [N] or [N, K] (one column per
reward function). Unless an estimator is marked `multi_reward`, the K columns are first combined
with `reward_weights` into one scalar reward per row, then the estimator normalises within groups.
Singleton groups (one completion) get advantage 0 in every group-relative estimator.
"""
from __future__ import annotations

import torch

from mmrl.core.registry import Registry

ADVANTAGES = Registry("advantage estimator")


def combine_rewards(rewards: torch.Tensor, reward_weights: list[float] | None = None) -> torch.Tensor:
    """[N, K] -> [N] weighted sum of reward columns (weights default to 1)."""
    if rewards.dim() == 1:
        return rewards
    weights = torch.ones(rewards.shape[1]) if reward_weights is None else torch.as_tensor(reward_weights)
    if weights.numel() != rewards.shape[1]:
        raise ValueError(f"reward_weights has {weights.numel()} entries for {rewards.shape[1]} reward columns")
    return rewards @ weights.to(rewards)


def group_stats(values: torch.Tensor, group_ids: torch.Tensor):
    """Per-row group statistics of `values` [N]: (mean, unbiased std, size, max - min), each [N].

    The std of a singleton group is reported as 0 (it has no spread to normalise by)."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    values = values.double()
    n = counts.to(values)
    sums = torch.zeros_like(n).index_add_(0, inverse, values)
    mean = sums / n
    sq = torch.zeros_like(n).index_add_(0, inverse, (values - mean[inverse]) ** 2)
    std = torch.where(n > 1, (sq / (n - 1).clamp(min=1)).sqrt(), torch.zeros_like(n))
    vmax = torch.full_like(n, -float("inf")).scatter_reduce(0, inverse, values, "amax")
    vmin = torch.full_like(n, float("inf")).scatter_reduce(0, inverse, values, "amin")
    return mean[inverse], std[inverse], n[inverse], (vmax - vmin)[inverse]


@ADVANTAGES.register("grpo")
def group_normalized_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (DeepSeekMath, arXiv 2402.03300, eq. 3 / sec. 4.1.2): A_i = (r_i - mean_G r) / (std_G r + eps).

    std is the unbiased sample std (as torch.std, verl); a group whose rewards are all equal gets 0.
    rewards, group_ids: [N] -> [N]."""
    mean, std, n, spread = group_stats(rewards, group_ids)
    adv = (rewards.double() - mean) / (std + eps)
    return torch.where((n > 1) & (spread > 0), adv, torch.zeros_like(adv)).to(rewards.dtype)


@ADVANTAGES.register("dr_grpo")
def mean_centered_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO (Understanding R1-Zero-Like Training, arXiv 2503.20783, eq. 6): A_i = r_i - mean_G r.

    No std division (removes the question-difficulty bias). rewards, group_ids: [N] -> [N]."""
    mean, _, n, _ = group_stats(rewards, group_ids)
    adv = rewards.double() - mean
    return torch.where(n > 1, adv, torch.zeros_like(adv)).to(rewards.dtype)


@ADVANTAGES.register("rloo")
def leave_one_out_advantages(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO (Back to Basics, arXiv 2402.14740, eq. 5): A_i = r_i - 1/(G-1) sum_{j != i} r_j.

    Equals G/(G-1) (r_i - mean_G r). rewards, group_ids: [N] -> [N]."""
    mean, _, n, _ = group_stats(rewards, group_ids)
    adv = n / (n - 1).clamp(min=1) * (rewards.double() - mean)
    return torch.where(n > 1, adv, torch.zeros_like(adv)).to(rewards.dtype)


@ADVANTAGES.register("ngrpo")
def max_reward_calibrated_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, r_max: float = 1.0,
                                     num_virtual: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """NGRPO advantage calibration (arXiv 2509.18851, sec. 3.1; official code
    nangongrui-ngr/NGRPO `compute_ngrpo_outcome_advantage`):

    R' = R_group + {r_max} x num_virtual;  A_i = (r_i - mean R') / (std_u R' + eps).
    The virtual samples enter the statistics only, so all-wrong groups get negative, non-zero
    advantages; all-r_max groups still get 0. rewards, group_ids: [N] -> [N]."""
    mean, std, n, _ = group_stats(rewards, group_ids)
    k = float(num_virtual)
    r = rewards.double()
    aug_n = n + k
    aug_mean = (mean * n + k * r_max) / aug_n
    # sum of squares about the augmented mean = (n-1) std^2 + n (mean - aug_mean)^2 + k (r_max - aug_mean)^2
    sq = (n - 1) * std ** 2 + n * (mean - aug_mean) ** 2 + k * (r_max - aug_mean) ** 2
    aug_std = (sq / (aug_n - 1)).sqrt()
    adv = (r - aug_mean) / (aug_std + eps)
    keep = (n > 1) & (aug_std > 1e-12)
    return torch.where(keep, adv, torch.zeros_like(adv)).to(rewards.dtype)


def compute(name: str, rewards: torch.Tensor, group_ids: torch.Tensor,
            reward_weights: list[float] | None = None, **params) -> torch.Tensor:
    """Advantages [N] from rewards [N] or [N, K] with the estimator registered as `name`."""
    fn = ADVANTAGES.get(name)
    if not getattr(fn, "multi_reward", False):
        rewards = combine_rewards(rewards, reward_weights)
    elif reward_weights is not None:
        params["reward_weights"] = reward_weights
    return fn(rewards.float(), group_ids, **params)
