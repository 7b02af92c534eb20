"""Advantage estimators: pure functions (rewards, group ids) -> advantages [N], registered by name.

`compute` is the one call site the trainer uses. Rewards come as [N] or [N, K] (one column per
reward function). Unless an estimator is marked `multi_reward`, the K columns are first combined
with `reward_weights` into one scalar reward per row, then the estimator normalises within groups.
Singleton groups (one completion) get advantage 0 in every group-relative estimator.
"""
from __future__ import annotations

import inspect

import torch

from mmrl.registry import Registry

ADVANTAGES = Registry("advantage estimator", flags={
    "multi_reward": False,  # takes the K reward columns itself (otherwise they are combined by weight first)
    "single_stream": False,  # meaningful with one completion per prompt (SPO)
    "state_class": None,  # the class of the state it keeps across steps (checkpointed)
})


def combine_rewards(rewards: torch.Tensor, reward_weights: list[float] | None = None) -> torch.Tensor:
    """[N, K] -> [N] weighted sum of reward columns (weights default to 1)."""
    if rewards.dim() == 1:
        return rewards
    weights = torch.ones(rewards.shape[1]) if reward_weights is None else torch.as_tensor(reward_weights)
    if weights.numel() != rewards.shape[1]:
        raise ValueError(f"reward_weights has {weights.numel()} entries for {rewards.shape[1]} reward columns")
    return rewards @ weights.to(rewards)


def group_sum(values: torch.Tensor, inverse: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per-group sums [num_groups] of `values` [N], rows mapped to groups by `inverse` [N]."""
    return torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, inverse, values)


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


def _zscore(values: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / (std_u + eps) over the whole tensor; 0 for fewer than two values."""
    if values.numel() < 2:
        return torch.zeros_like(values)
    return (values - values.mean()) / (values.std() + eps)


@ADVANTAGES.register("gdpo")
def decoupled_normalized_advantages(rewards: torch.Tensor, group_ids: torch.Tensor,
                                    reward_weights: list[float] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """GDPO, group reward-decoupled normalisation (NVIDIA, arXiv 2601.05242, eq. 4-6; official code
    NVlabs/GDPO trl-GDPO `apply_gdpo`):

    A^k_i = (r^k_i - mean_G r^k) / (std_G r^k + eps)   per reward column k, within the group;
    S_i   = sum_k w_k A^k_i;                             A_i = (S_i - mean_B S) / (std_B S + eps).
    The last step is over the whole batch with one weight per completion (the trl code's per-sequence
    statistics; verl's variant weights completions by token count). Summing first (grpo) maps distinct
    reward combinations to equal advantages; this does not. rewards: [N, K] (or [N]) -> [N]."""
    columns = rewards[:, None] if rewards.dim() == 1 else rewards
    per_column = torch.stack([group_normalized_advantages(columns[:, k], group_ids, eps=eps).double()
                              for k in range(columns.shape[1])], dim=1)
    summed = combine_rewards(per_column, reward_weights)
    return _zscore(summed, eps).to(rewards.dtype)


ADVANTAGES.mark(decoupled_normalized_advantages, multi_reward=True)


@ADVANTAGES.register("dgpo")
def difficulty_balanced_advantages(rewards: torch.Tensor, group_ids: torch.Tensor,
                                   reward_weights: list[float] | None = None, question_weighting: bool = True,
                                   temperature: float = 2.0, eps: float = 1e-4, success_column: int = 0) -> torch.Tensor:
    """DGPO (MathForge, arXiv 2601.20614, sec. 3; official code AMAP-ML/MathForge trl fork,
    `enable_dgpo`, `enable_dgpo_dqw`, `dgpo_dqw_temp`).

    DGAE: A_i = (R_i - mean_G R) / (MAD_G R + eps),  MAD = 1/G sum_j |R_j - mean_G R|  (R: weighted
    total reward), so every non-degenerate group carries the same total |A| = G, hard or easy.
    DQW (if `question_weighting`): over the V groups of the batch with non-zero reward spread,
    w_q = V * softmax_q(-acc_q / temperature), acc_q = group mean of the success reward's column (accuracy;
    `success_column`, the trainer's `rewards[i].success`, default the first);
    a valid group with acc 0 counts as acc 1 (lowest weight), as in the code. A_i <- w_q A_i, which
    equals weighting the question's loss since w_q > 0. rewards: [N, K] (or [N]) -> [N]."""
    columns = rewards[:, None] if rewards.dim() == 1 else rewards
    total = combine_rewards(columns, reward_weights).double()
    mean, _, n, spread = group_stats(total, group_ids)
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    mad = group_sum((total - mean).abs(), inverse, len(counts))[inverse] / n
    valid = (n > 1) & (spread > 0)
    adv = torch.where(valid, (total - mean) / (mad + eps), torch.zeros_like(total))
    if question_weighting and valid.any():
        acc = group_sum(columns[:, success_column].double(), inverse, len(counts)) / counts
        acc = torch.where(acc == 0, torch.ones_like(acc), acc)
        valid_group = group_sum(valid.double(), inverse, len(counts)) > 0
        logits = torch.where(valid_group, -acc / temperature, torch.full_like(acc, -float("inf")))
        weight = torch.softmax(logits, 0) * valid_group.sum()
        adv = adv * torch.where(valid_group, weight, torch.ones_like(weight))[inverse]
    return adv.to(rewards.dtype)


ADVANTAGES.mark(difficulty_balanced_advantages, multi_reward=True)
# ---------------------------------------------------------------- stateful estimators
class BetaMoments:
    """State of `bnpo`: the method-of-moments statistics (mean, variance) of the prompts' success
    rates that the Beta parameters are fitted from, per reward column; an EMA over steps when
    momentum > 0 (momentum 0, the official code's choice, refits from each batch alone)."""

    def __init__(self):
        self.moments: dict[int, list[float]] = {}  # column -> [mu, var]
        self.last_fit: dict[int, list[float]] = {}  # column -> [alpha, beta] (for logging)

    def update(self, column: int, mu: float, var: float, momentum: float) -> tuple[float, float]:
        if column in self.moments and momentum > 0:
            old_mu, old_var = self.moments[column]
            mu, var = momentum * old_mu + (1 - momentum) * mu, momentum * old_var + (1 - momentum) * var
        self.moments[column] = [mu, var]
        return mu, var

    def state_dict(self) -> dict:
        return {"moments": {k: list(v) for k, v in self.moments.items()},
                "last_fit": {k: list(v) for k, v in self.last_fit.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.moments = {int(k): list(v) for k, v in state["moments"].items()}
        self.last_fit = {int(k): list(v) for k, v in state["last_fit"].items()}


def beta_log_density(p: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """log Beta(p; alpha, beta), finite at p in {0, 1} when the exponent is 0 (alpha or beta = 1)."""
    alpha_t, beta_t = torch.tensor(alpha, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64)
    log_norm = torch.lgamma(alpha_t) + torch.lgamma(beta_t) - torch.lgamma(alpha_t + beta_t)
    return torch.special.xlogy(alpha_t - 1, p) + torch.special.xlogy(beta_t - 1, 1 - p) - log_norm


def _bnpo_column(scores, group_ids, moments, column, momentum):
    mean, _, n, _ = group_stats(scores, group_ids)
    p = torch.where(n > 1, mean, torch.zeros_like(mean))  # the code's p = 0 for a one-sample group
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    per_prompt = group_sum(p, inverse, len(counts)) / counts
    if len(per_prompt) > 1:
        mu, var = per_prompt.mean().item(), per_prompt.var().item()
    else:
        mu, var = 0.0, 1.0
    if moments is not None:
        mu, var = moments.update(column, mu, var, momentum)
    k = mu * (1 - mu) / max(var, 1e-6) - 1
    alpha, beta = max(1.0, 1 + k * mu / 3), max(1.0, 1 + k * (1 - mu) / 3)
    if moments is not None:
        moments.last_fit[column] = [alpha, beta]
    inv_density = torch.exp(-beta_log_density(p, alpha, beta)).clamp(0, 1e6)
    return inv_density * (scores - p)


@ADVANTAGES.register("bnpo")
def beta_normalized_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, state: BetaMoments | None = None,
                               reward_weights: list[float] | None = None, r_min: float = 0.0, r_max: float = 1.0,
                               momentum: float = 0.0, decompose: bool = False) -> torch.Tensor:
    """BNPO (Beta Normalization Policy Optimization, arXiv 2506.02864, eq. 9-11 and Thm. 2; official
    code changyi7231/BNPO `compute_bnpo_outcome_advantage`).

    R <- (R - r_min) / (r_max - r_min);  p(q) = group mean of R;  over the batch's prompts
    mu = mean p, v = var_u p;  k = mu (1 - mu) / v - 1;  alpha = max(1, 1 + k mu / 3),
    beta = max(1, 1 + k (1 - mu) / 3);   A_i = (R_i - p(q)) / f_Beta(p(q); alpha, beta), 1/f <= 1e6.
    alpha = beta = 1 is REINFORCE with a mean baseline; alpha = beta = 3/2 recovers GRPO for binary R.
    `momentum` > 0 fits the Beta from an EMA of (mu, v) across steps (kept in `state`); 0 refits
    from each batch, as the official code. `decompose` (the paper's advantage decomposition):
    one BNPO advantage per reward column, averaged; otherwise the weighted total reward is used."""
    columns = rewards[:, None] if rewards.dim() == 1 else rewards
    if decompose:
        per_column = [_bnpo_column(((columns[:, k].double() - r_min) / (r_max - r_min)).clamp(0, 1),
                                   group_ids, state, k, momentum) for k in range(columns.shape[1])]
        return torch.stack(per_column, 1).mean(1).to(rewards.dtype)
    total = combine_rewards(columns, reward_weights).double()
    scores = ((total - r_min) / (r_max - r_min)).clamp(0, 1)
    return _bnpo_column(scores, group_ids, state, 0, momentum).to(rewards.dtype)


ADVANTAGES.mark(beta_normalized_advantages, multi_reward=True, state_class=BetaMoments)


class SPOTracker:
    """State of `spo`: a Beta(alpha, beta) estimate of each prompt's success probability, plus (for
    the KL-adaptive forgetting factor) the last completion seen for each prompt and its log-probs
    right after that step's update. Keys are example indices; values are plain python numbers so the
    state pickles and loads with torch's weights-only loader."""

    def __init__(self, prior: float = 0.5):
        self.prior = prior
        self.alpha: dict[int, float] = {}
        self.beta: dict[int, float] = {}
        self.last: dict[int, dict] = {}  # index -> {prompt: [ids], completion: [ids], logp: [floats]}

    def value(self, index: int) -> float:
        a, b = self.alpha.get(index, self.prior), self.beta.get(index, self.prior)
        return a / (a + b)

    def initialize(self, index: int, successes: float, samples: int, rho_min: float = 0.875) -> None:
        """Offline initialisation (SPO sec. 3.2): N_init = 1/(1 - rho_min) pseudo-counts spread by the
        smoothed success rate of `samples` rollouts of the initial policy."""
        n_init = 1.0 / (1.0 - rho_min)
        self.alpha[index] = n_init * (successes + 0.5) / (samples + 1)
        self.beta[index] = n_init * (samples - successes + 0.5) / (samples + 1)

    @staticmethod
    def forgetting(divergence: float, rho_min: float = 0.875, rho_max: float = 0.96, d_half: float = 0.06) -> float:
        """rho = clip(2^(-D / D_half), rho_min, rho_max): forget faster the more the policy moved."""
        return min(max(2.0 ** (-divergence / d_half), rho_min), rho_max)

    def update(self, index: int, successes: float, failures: float, rho: float) -> None:
        self.alpha[index] = rho * self.alpha.get(index, self.prior) + successes
        self.beta[index] = rho * self.beta.get(index, self.prior) + failures

    def state_dict(self) -> dict:
        return {"prior": self.prior, "alpha": dict(self.alpha), "beta": dict(self.beta),
                "last": {k: dict(v) for k, v in self.last.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.prior = state["prior"]
        self.alpha = {int(k): float(v) for k, v in state["alpha"].items()}
        self.beta = {int(k): float(v) for k, v in state["beta"].items()}
        self.last = {int(k): dict(v) for k, v in state["last"].items()}


@ADVANTAGES.register("spo")
def single_stream_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, state: SPOTracker,
                             example_index: torch.Tensor, divergence: dict[int, float] | None = None,
                             reward_weights: list[float] | None = None, r_min: float = 0.0, r_max: float = 1.0,
                             rho: str = "adaptive", rho_min: float = 0.875, rho_max: float = 0.96,
                             d_half: float = 0.06, eps: float = 1e-8) -> torch.Tensor:
    """SPO (Single-stream Policy Optimization, arXiv 2509.13232, eq. 3-6; official code
    verl-project/verl-recipe spo/spo_ray_trainer.py).

    p_hat(x) = alpha / (alpha + beta) of the prompt's tracker *before* this step;
    A_i = R_i - (r_min + (r_max - r_min) p_hat(x_i));  A <- (A - mean_B A) / (std_B A + eps) over the
    whole batch (all ranks). Then, per prompt, alpha <- rho alpha + sum R', beta <- rho beta + sum (1 - R'),
    R' = (R - r_min) / (r_max - r_min) in [0, 1]. rho = clip(2^(-D/d_half), rho_min, rho_max) with
    D = token-mean |log pi_prev(y') - log pi_now(y')| of the prompt's previous completion y'
    (`divergence`, computed by the trainer; 0 on a first visit), or rho_min when rho='constant'.
    Works with one completion per prompt. Mutates `state`. rewards: [N] or [N, K] -> [N].
    Unseen prompts start at Beta(0.5, 0.5); the paper's offline initialisation from N_eff rollouts
    of the initial policy is `SPOTracker.initialize`, which the trainer does not run."""
    if rho not in ("adaptive", "constant"):
        raise ValueError(f"advantage_params.rho: '{rho}' is not 'adaptive' or 'constant'")
    total = combine_rewards(rewards[:, None] if rewards.dim() == 1 else rewards, reward_weights).double()
    scale = r_max - r_min
    index = [int(i) for i in example_index.tolist()]
    baseline = torch.tensor([state.value(i) for i in index], dtype=torch.float64, device=total.device)
    adv = _zscore(total - (r_min + scale * baseline), eps)
    success = ((total - r_min) / scale).clamp(0, 1).tolist()
    tallies: dict[int, list[float]] = {}
    for i, s in zip(index, success):
        tally = tallies.setdefault(i, [0.0, 0.0])
        tally[0], tally[1] = tally[0] + s, tally[1] + 1 - s
    for i, (s, f) in tallies.items():
        if rho == "constant":
            factor = rho_min
        else:
            factor = SPOTracker.forgetting((divergence or {}).get(i, 0.0), rho_min, rho_max, d_half)
        state.update(i, s, f, factor)
    return adv.to(rewards.dtype)


ADVANTAGES.mark(single_stream_advantages, multi_reward=True, single_stream=True, state_class=SPOTracker)

CONTEXT_ARGS = ("state", "example_index", "divergence", "reward_weights", "success_column")


def make_state(name: str):
    """A fresh state object for a stateful estimator (bnpo, spo), else None."""
    cls = ADVANTAGES.flag(name, "state_class")
    return cls() if cls is not None else None


def compute(name: str, rewards: torch.Tensor, group_ids: torch.Tensor,
            reward_weights: list[float] | None = None, state=None, **params) -> torch.Tensor:
    """Advantages [N] from rewards [N] or [N, K] with the estimator registered as `name`.

    Stateful estimators (`make_state(name)` is not None) need `state`; `spo` also takes
    `example_index` [N] (which prompt each row answers) and `divergence`; context arguments an
    estimator does not take are dropped, so the trainer can pass the same ones to every estimator."""
    fn = ADVANTAGES.get(name)
    if ADVANTAGES.flag(name, "state_class") is not None:
        if state is None:
            raise ValueError(f"advantage '{name}' is stateful: pass state=make_state('{name}')")
        params["state"] = state
    if not ADVANTAGES.flag(name, "multi_reward"):
        rewards = combine_rewards(rewards, reward_weights)
    elif reward_weights is not None:
        params["reward_weights"] = reward_weights
    accepted = inspect.signature(fn).parameters
    params = {k: v for k, v in params.items() if k in accepted or k not in CONTEXT_ARGS}
    return fn(rewards.float(), group_ids, **params)
