"""Prompt samplers: which prompts each step trains on and how many completions each gets.

Every rank holds an identical sampler (same seed, and `update` is fed the batch gathered from all
ranks), so all ranks draw the same global prompt list and each keeps its contiguous share. The
protocol the trainer uses is `Sampler` below; `SamplerDefaults` holds its optional members' defaults,
which every sampler here inherits.
"""
from __future__ import annotations

import inspect
import math
from typing import Protocol

import numpy as np
import torch

from mmrl.core.advantages import SPOTracker
from mmrl.core.diversity import distinct_n, self_bleu
from mmrl.registry import Registry

SAMPLERS = Registry("prompt sampler")


class Sampler(Protocol):
    """What the trainer calls on a prompt sampler (a new one subclasses `SamplerDefaults` for the
    optional members it does not set)."""
    refill: bool  # True: degenerate groups are dropped and the batch refilled with new draws (DAPO)
    max_rounds: int  # with refill: generation rounds per step at most
    needs_completions: bool  # update() also gets completions=[token id lists of each group]
    rescore_every: int  # > 0: every prompt is re-rolled and re-scored every this many steps (VAS)

    def sample(self, n: int) -> list[int]:
        """The step's n global prompt indices."""

    def group_sizes(self, indices: list[int], group_size: int) -> list[int]:
        """Completions per prompt (knapsack varies them)."""

    def update(self, indices: list[int], successes: list[list[float]], **extra) -> None:
        """After scoring: successes[j] lists the success values in [0, 1] of prompt indices[j]'s completions."""

    def metrics(self) -> dict:
        """The sampler's own statistics for the step's log line."""

    def state_dict(self) -> dict:
        """Plain python values and tensors, saved in checkpoints."""

    def load_state_dict(self, state: dict) -> None:
        ...


class SamplerDefaults:
    """The optional members of `Sampler`, with their defaults."""
    refill = False
    max_rounds = 1
    needs_completions = False
    rescore_every = 0

    def metrics(self) -> dict:
        return {}
BUILT_IN_ARGS = ("num_prompts", "seed", "tracker")


def build(name: str, num_prompts: int, seed: int = 0, params: dict | None = None, tracker=None):
    """The sampler registered as `name`; `tracker` is the advantage estimator's state, which a sampler
    that takes one (spo_priority) gets when it is an SPO tracker."""
    cls = SAMPLERS.get(name)
    kwargs = dict(params or {})
    if "tracker" in inspect.signature(cls).parameters:
        kwargs["tracker"] = tracker if isinstance(tracker, SPOTracker) else None
    return cls(num_prompts, seed=seed, **kwargs)


class _NumpyRandom:
    """A seeded numpy generator whose state is a dict of python ints (checkpoint friendly)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def state_dict(self) -> dict:
        return self.rng.bit_generator.state

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state


@SAMPLERS.register("uniform")
class UniformSampler(SamplerDefaults):
    """Shuffled passes (epochs) over the prompt set; each call returns the next `n` indices."""

    refill = False

    def __init__(self, num_prompts: int, seed: int = 0):
        self.num_prompts = num_prompts
        self.generator = torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.position = 0
        self.epoch = 0

    def sample(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self.position >= len(self.order):
                self.order = torch.randperm(self.num_prompts, generator=self.generator).tolist()
                self.position, self.epoch = 0, self.epoch + 1
            take = min(n - len(out), len(self.order) - self.position)
            out += self.order[self.position:self.position + take]
            self.position += take
        return out

    def group_sizes(self, indices: list[int], group_size: int) -> list[int]:
        return [group_size] * len(indices)

    def update(self, indices: list[int], successes: list[list[float]]) -> None:
        """Uniform draws do not depend on outcomes."""

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": list(self.order),
                "position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position, self.epoch = list(state["order"]), state["position"], state["epoch"]


@SAMPLERS.register("dynamic_filter")
class DynamicFilterSampler(UniformSampler):
    """DAPO dynamic sampling (arXiv 2503.14476, sec. 3.2, eq. 11; verl-recipe dapo/): groups whose
    rewards are all equal (accuracy 0 or 1: zero advantage, no gradient) are dropped and new prompts
    are drawn and rolled out until the step has `prompts_per_step` informative groups, for at most
    `max_rounds` generation rounds (verl's max_num_gen_batches, 10 in the DAPO scripts). If the cap
    is hit, the batch is topped up with degenerate groups (zero advantage) and the shortfall logged."""

    refill = True

    def __init__(self, num_prompts: int, seed: int = 0, max_rounds: int = 10):
        super().__init__(num_prompts, seed)
        if max_rounds < 1:
            raise ValueError(f"sampler.params.max_rounds={max_rounds} must be >= 1")
        self.max_rounds = max_rounds


@SAMPLERS.register("vade")
class VADESampler(SamplerDefaults):
    """VADE (Variance-Aware Dynamic Sampling, arXiv 2511.18902, method figure; code not public).

    Per prompt i a Beta(alpha_i + 1, beta_i + 1) posterior of its success probability (pseudo-counts
    start at 0: a uniform prior). Each step draws p_i ~ posterior for every candidate (Thompson
    sampling), scores I_i = p_i (1 - p_i)^2 (objective 'skewed', the paper's information gain, peak
    at p = 1/3) or p_i (1 - p_i) ('variance', the paper's ablation, peak at 1/2) and takes the top n.
    After the rollouts, with r_i successes out of G: selected prompts alpha <- l1 alpha + r,
    beta <- l1 beta + (G - r) (fast adaptation, l1 = decay_selected); every other prompt decays
    alpha, beta <- l2 alpha, l2 beta (slow forgetting, l2 = decay_unselected). `candidates`: draw
    from a random pool of this many prompts each step (None: the whole set)."""

    refill = False

    def __init__(self, num_prompts: int, seed: int = 0, decay_selected: float = 0.2,
                 decay_unselected: float = 0.999, objective: str = "skewed", candidates: int | None = None):
        if objective not in ("skewed", "variance"):
            raise ValueError(f"sampler.params.objective: '{objective}' is not 'skewed' or 'variance'")
        self.num_prompts, self.objective, self.candidates = num_prompts, objective, candidates
        self.decay_selected, self.decay_unselected = decay_selected, decay_unselected
        self.alpha = np.zeros(num_prompts)
        self.beta = np.zeros(num_prompts)
        self.random = _NumpyRandom(seed)

    def information(self, p: np.ndarray) -> np.ndarray:
        return p * (1 - p) ** 2 if self.objective == "skewed" else p * (1 - p)

    def sample(self, n: int) -> list[int]:
        rng = self.random.rng
        if self.candidates is None or self.candidates >= self.num_prompts:
            pool = np.arange(self.num_prompts)
        else:
            pool = rng.choice(self.num_prompts, size=max(n, self.candidates), replace=False)
        if n > len(pool):
            raise ValueError(f"vade: {n} prompts per step but only {len(pool)} candidates")
        p = rng.beta(self.alpha[pool] + 1, self.beta[pool] + 1)
        order = np.argsort(-self.information(p), kind="stable")
        return [int(i) for i in pool[order[:n]]]

    def group_sizes(self, indices: list[int], group_size: int) -> list[int]:
        return [group_size] * len(indices)

    def update(self, indices: list[int], successes: list[list[float]]) -> None:
        selected = np.zeros(self.num_prompts, dtype=bool)
        selected[indices] = True
        self.alpha[~selected] *= self.decay_unselected
        self.beta[~selected] *= self.decay_unselected
        for i, s in zip(indices, successes):
            r = float(sum(s))
            self.alpha[i] = self.decay_selected * self.alpha[i] + r
            self.beta[i] = self.decay_selected * self.beta[i] + len(s) - r

    def state_dict(self) -> dict:
        return {"alpha": torch.from_numpy(self.alpha.copy()), "beta": torch.from_numpy(self.beta.copy()),
                "random": self.random.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.alpha, self.beta = state["alpha"].numpy().copy(), state["beta"].numpy().copy()
        self.random.load_state_dict(state["random"])


@SAMPLERS.register("vas")
class VASSampler(UniformSampler):
    """VAS, variance-aware sampling (MMR1, Leng et al., arXiv 2509.21268, sec. 3 and Alg. 1).

    Per prompt x, from its latest group of N completions with pass rate P(x):
        OVS(x) = P(1 - P)                      outcome variance
        TDS(x) = diversity of the completions  trajectory diversity
        VPS(x) = alpha * OVS + beta * TDS,     min-max normalised over the dataset into weights w.
    A step's n prompts: floor(mix * n) drawn with replacement with probability proportional to w,
    the rest uniformly (shuffled passes). TDS follows the paper, "inverse self-BLEU": 1 - self-BLEU
    (1..3-grams) of the completions' token ids, or `diversity: distinct_3`; the official code adds
    self-BLEU itself (a similarity) with a positive weight, which rewards low diversity.
    Refresh: by default from the training rollouts already made (Alg. 1's in-batch refresh, no
    extra generation). `rescore_every: T` adds the paper's periodic re-scoring: before step 0 and
    every T steps the trainer generates `rescore_group_size` fresh completions of every prompt
    (mmrl/core/methods/rescoring.py) and updates all scores; `refresh_in_batch: false` then keeps only the
    periodic scores, as the official code does (its examples/mmr1.yaml: every 4 steps, 8
    completions). `momentum` m blends a prompt's new VPS with its previous one (v <- m v + (1 - m)
    v_new). A prompt not yet scored counts, in the weighted half, with the mean VPS of the scored
    prompts (`unscored: mean`; none scored: uniform weights); `unscored: max` gives it the highest
    VPS (P = 0.5, TDS = 1), so unseen prompts are drawn first. With `rescore_every` every prompt is
    scored before step 0, as in the paper's Algorithm 1. Defaults: alpha 0.8, beta 0.2, mix 0.5
    (paper sec. 6.1)."""

    needs_completions = True

    def __init__(self, num_prompts: int, seed: int = 0, mix: float = 0.5, alpha: float = 0.8, beta: float = 0.2,
                 diversity: str = "self_bleu", momentum: float = 0.0, rescore_every: int = 0,
                 rescore_group_size: int = 8, refresh_in_batch: bool = True, unscored: str = "mean"):
        super().__init__(num_prompts, seed)
        if unscored not in ("mean", "max"):
            raise ValueError(f"sampler.params.unscored: '{unscored}' is not 'mean' (the scored prompts' mean VPS) "
                             "or 'max' (unseen prompts first)")
        self.unscored = unscored
        if rescore_every < 0 or rescore_group_size < 1 or (not refresh_in_batch and rescore_every == 0):
            raise ValueError("sampler.params: vas needs rescore_every >= 0, rescore_group_size >= 1, and "
                             "rescore_every > 0 when refresh_in_batch is false (else the scores never change)")
        self.rescore_every, self.rescore_group_size = rescore_every, rescore_group_size
        self.refresh_in_batch = refresh_in_batch
        if not 0 <= mix <= 1 or not 0 <= momentum < 1 or alpha < 0 or beta < 0:
            raise ValueError("sampler.params: vas needs 0 <= mix <= 1, 0 <= momentum < 1, alpha, beta >= 0")
        if diversity not in ("self_bleu", "distinct_3"):
            raise ValueError(f"sampler.params.diversity: '{diversity}' is not 'self_bleu' or 'distinct_3'")
        self.mix, self.alpha, self.beta, self.diversity, self.momentum = mix, alpha, beta, diversity, momentum
        self.vps = np.full(num_prompts, alpha * 0.25 + beta * 1.0)
        self.scored = np.zeros(num_prompts, dtype=bool)
        self.random = _NumpyRandom(seed + 1)
        self.last_weighted = 0

    def weights(self) -> np.ndarray:
        """Min-max normalised VPS of every prompt (unscored prompts as `unscored` says)."""
        vps = self.vps.copy()
        if self.unscored == "mean":
            vps[~self.scored] = vps[self.scored].mean() if self.scored.any() else 0.0
        low, high = vps.min(), vps.max()
        return (vps - low) / (high - low + 1e-8)

    def sample(self, n: int) -> list[int]:
        rng = self.random.rng
        weighted = int(math.floor(self.mix * n))
        w = self.weights()
        p = w / w.sum() if w.sum() > 0 else np.full(self.num_prompts, 1.0 / self.num_prompts)
        picks = [int(i) for i in rng.choice(self.num_prompts, size=weighted, replace=True, p=p)]
        picks += super().sample(n - weighted)
        self.last_weighted = weighted
        return [picks[i] for i in rng.permutation(n)]

    def trajectory_diversity(self, completions: list[list[int]]) -> float:
        if self.diversity == "distinct_3":
            return distinct_n(completions, 3)
        return 1.0 - self_bleu(completions, 3)

    def update(self, indices: list[int], successes: list[list[float]], completions=None,
               rescoring: bool = False) -> None:
        if completions is None:
            raise ValueError("the vas sampler needs each group's completions")
        if not (rescoring or self.refresh_in_batch):
            return
        for i, s, group in zip(indices, successes, completions):
            pass_rate = float(np.mean(s))
            new = self.alpha * pass_rate * (1 - pass_rate) + self.beta * self.trajectory_diversity(group)
            self.vps[i] = self.momentum * self.vps[i] + (1 - self.momentum) * new if self.scored[i] else new
            self.scored[i] = True

    def metrics(self) -> dict:
        scored = self.vps[self.scored] if self.scored.any() else self.vps
        return {"vas/vps_mean": float(scored.mean()), "vas/vps_std": float(scored.std()),
                "vas/weighted_prompts": float(self.last_weighted), "vas/scored_fraction": float(self.scored.mean())}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "vps": torch.from_numpy(self.vps.copy()),
                "scored": torch.from_numpy(self.scored.copy()), "random": self.random.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.vps = state["vps"].numpy().copy()
        # checkpoints written before `scored` existed: every prompt counts as scored
        self.scored = state["scored"].numpy().copy() if "scored" in state else np.ones(len(self.vps), dtype=bool)
        self.random.load_state_dict(state["random"])


@SAMPLERS.register("spo_priority")
class SPOPrioritySampler(SamplerDefaults):
    """SPO prioritized prompt sampling (arXiv 2509.13232, sec. 3.3; verl-recipe spo/): from a random
    pool of `candidates` prompts (the official gen batch; None: the whole set), draw n without
    replacement with probability proportional to w(x) = sqrt(p_hat (1 - p_hat)) + offset, p_hat the
    SPO tracker's success estimate (prompts near 50% carry the most signal; the offset keeps
    exploring the rest). Needs `algorithm.advantage: spo`, whose tracker it reads."""

    refill = False

    def __init__(self, num_prompts: int, seed: int = 0, tracker=None, candidates: int | None = None,
                 offset: float = 0.05):
        if tracker is None:
            raise ValueError("sampler 'spo_priority' reads the SPO tracker: set algorithm.advantage: spo")
        self.num_prompts, self.tracker, self.candidates, self.offset = num_prompts, tracker, candidates, offset
        self.random = _NumpyRandom(seed)

    def weights(self, indices) -> np.ndarray:
        p = np.array([self.tracker.value(int(i)) for i in indices])
        return np.sqrt(p * (1 - p)) + self.offset

    def sample(self, n: int) -> list[int]:
        rng = self.random.rng
        size = self.num_prompts if self.candidates is None else min(self.num_prompts, max(n, self.candidates))
        pool = rng.choice(self.num_prompts, size=size, replace=False)
        w = self.weights(pool)
        chosen = rng.choice(pool, size=n, replace=n > len(pool), p=w / w.sum())
        return [int(i) for i in chosen]

    def group_sizes(self, indices: list[int], group_size: int) -> list[int]:
        return [group_size] * len(indices)

    def update(self, indices: list[int], successes: list[list[float]]) -> None:
        """The tracker is updated by the spo estimator; the sampler only reads it."""

    def state_dict(self) -> dict:
        return {"random": self.random.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.random.load_state_dict(state["random"])


def knapsack_value(n: int, p: float) -> float:
    """Knapsack RL's value of n rollouts of a prompt with success rate p: the probability that the
    group has a non-zero GRPO gradient times the information gain p (1 - p)^2."""
    return (1 - p ** n - (1 - p) ** n) * p * (1 - p) ** 2


def knapsack_allocate(probs: list[float], budget: int, min_n: int, max_n: int) -> list[int]:
    """Rollouts per prompt (each in [min_n, max_n], total <= budget) maximising sum_i V(N_i, p_i),
    by dynamic programming over the extra rollouts beyond min_n (unit cost per rollout)."""
    extra_budget = budget - min_n * len(probs)
    if extra_budget < 0:
        raise ValueError(f"knapsack: budget {budget} is below min_n={min_n} x {len(probs)} prompts")
    best = np.zeros(extra_budget + 1)  # best[b]: value with at most b extra rollouts so far
    choices = []
    for p in probs:
        limit = min(max_n - min_n, extra_budget)
        gains = [knapsack_value(min_n + k, p) - knapsack_value(min_n, p) for k in range(limit + 1)]
        new, arg = np.full(extra_budget + 1, -np.inf), np.zeros(extra_budget + 1, dtype=int)
        for k, gain in enumerate(gains):
            candidate = np.full(extra_budget + 1, -np.inf)
            candidate[k:] = best[:extra_budget + 1 - k] + gain
            better = candidate > new + 1e-15
            new[better], arg[better] = candidate[better], k
        best = new
        choices.append(arg)
    counts, b = [], extra_budget
    for arg in reversed(choices):
        counts.append(min_n + int(arg[b]))
        b -= int(arg[b])
    return counts[::-1]


@SAMPLERS.register("knapsack")
class KnapsackSampler(UniformSampler):
    """Knapsack RL (arXiv 2509.25849, sec. 3; official code liziniu/KnapsackRL
    verl/trainer/ppo/exploration_utils.py `sampling_budget_by_knapsack`).

    Prompts are drawn uniformly; the step's rollout budget (n x group_size) is then split over them.
    A prompt's success rate p comes from its last `buffer` success values (used once there are at
    least `min_history`); prompts without history get group_size, p = 0 prompts `negative_n`, p = 1
    prompts `positive_n`, and every 0 < p < 1 prompt at least `min_n`. The rest of the budget is
    spread by a knapsack over the value V(N, p) = (1 - p^N - (1 - p)^N) p (1 - p)^2 (probability of
    a non-zero gradient x information gain), N <= max_n. As in the code, when the effective prompts
    need fewer rollouts than that (sum of min(max_n, log(1 - alpha) / log(max(p, 1 - p)))), they get
    what they need and the excess goes to the p = 0 prompts. Groups therefore differ in size."""

    def __init__(self, num_prompts: int, seed: int = 0, min_n: int = 2, max_n: int = 128, negative_n: int = 2,
                 positive_n: int = 2, buffer: int = 16, min_history: int = 8, alpha: float = 0.9):
        super().__init__(num_prompts, seed)
        self.min_n, self.max_n, self.negative_n, self.positive_n = min_n, max_n, negative_n, positive_n
        self.buffer, self.min_history, self.alpha = buffer, min_history, alpha
        self.history: dict[int, list[float]] = {}

    def success_rate(self, index: int) -> float | None:
        seen = self.history.get(index, [])
        return sum(seen) / len(seen) if len(seen) >= self.min_history else None

    def group_sizes(self, indices: list[int], group_size: int) -> list[int]:
        if max(self.min_n, self.negative_n, self.positive_n) > group_size:
            raise ValueError(f"knapsack: min_n, negative_n and positive_n must be <= rollout.group_size={group_size}")
        sizes: list[int] = [0] * len(indices)
        effective, zeros = [], []
        for j, i in enumerate(indices):
            p = self.success_rate(i)
            if p is None:
                sizes[j] = group_size
            elif p <= 0.0:
                sizes[j] = self.negative_n
                zeros.append(j)
            elif p >= 1.0:
                sizes[j] = self.positive_n
            else:
                effective.append((j, p))
        remaining = group_size * len(indices) - sum(sizes)
        if effective:
            need = [min(self.max_n, max(self.min_n, math.ceil(math.log(1 - self.alpha) / math.log(max(p, 1 - p)))))
                    for _, p in effective]
            if zeros and sum(need) <= remaining:
                counts = need
            else:
                counts = knapsack_allocate([p for _, p in effective], remaining, self.min_n, self.max_n)
            for (j, _), c in zip(effective, counts):
                sizes[j] = c
            remaining -= sum(counts)
        # what is left (a cap was reached, or nothing to optimise) goes round-robin to the p = 0
        # prompts, then to all, up to max_n each
        for pool in (zeros, list(range(len(indices)))):
            while remaining > 0 and any(sizes[j] < self.max_n for j in pool):
                for j in pool:
                    if remaining > 0 and sizes[j] < self.max_n:
                        sizes[j] += 1
                        remaining -= 1
        return sizes

    def update(self, indices: list[int], successes: list[list[float]]) -> None:
        for i, s in zip(indices, successes):
            self.history[i] = (self.history.get(i, []) + [float(x) for x in s])[-self.buffer:]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.history = {int(k): list(v) for k, v in state["history"].items()}
