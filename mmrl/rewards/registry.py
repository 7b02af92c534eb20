from __future__ import annotations

import logging
import math
from typing import NamedTuple

import torch

from mmrl.registry import Registry

REWARDS = Registry("reward function")
log = logging.getLogger(__name__)


ON_ERROR = ("drop", "zero", "raise")
REWARD_ARGS = ("completions", "examples", "completion_lengths")  # what every call passes (not config params)


class Scores(NamedTuple):
    """What `score` returns: rewards [N, K] (a failed sample holds 0), the reward names, the failures
    per reward name, and failed [N] (rows with a failure under on_error: drop)."""
    rewards: torch.Tensor
    names: list[str]
    errors: dict[str, int]
    failed: torch.Tensor


def _call_safely(fn, completions, examples, lengths, params) -> tuple[list[float], list[str | None]]:
    """Run `fn` on the batch; if it raises (or returns the wrong count), retry one sample at a time.
    Returns the values (NaN where a sample failed) and, per sample, why it failed (None: it did not)."""
    try:
        values = fn(completions, examples=examples, completion_lengths=lengths, **params)
        if len(values) != len(completions):
            raise ValueError(f"returned {len(values)} values for {len(completions)} completions")
        values, why = [float(v) for v in values], [None] * len(completions)
    except Exception:  # noqa: BLE001 - a reward bug must not kill a multi-hour run
        values, why = [], []
        for c, e, n in zip(completions, examples, lengths):
            try:
                values.append(float(fn([c], examples=[e], completion_lengths=[n], **params)[0]))
                why.append(None)
            except Exception as err:  # noqa: BLE001
                values.append(float("nan"))
                why.append(f"{type(err).__name__}: {err}")
    why = [w if w is not None or math.isfinite(v) else f"returned {v}" for v, w in zip(values, why)]
    return values, why


def success_column(reward_cfgs) -> int:
    """The column of the run's success signal: the reward with `success: true`, else the first."""
    marked = [i for i, r in enumerate(reward_cfgs) if r.success]
    if len(marked) > 1:
        raise ValueError(f"rewards: {', '.join(f'rewards.{i}' for i in marked)} all set success: true; the success "
                         "signal (samplers, IGPO) is one reward")
    return marked[0] if marked else 0


def score_batch(reward_cfgs, batch) -> dict[str, int]:
    """Rewards [N, K] of a rollout batch's completions (against its examples) into `batch.rewards` /
    `batch.reward_names` / `batch.reward_weights`, the rows to drop into `batch.reward_failed`; returns
    the failures per reward as metrics {'reward/<name>/errors': count}."""
    scores = score(reward_cfgs, batch.completions_text, batch.examples, batch.completion_lengths.tolist())
    device = batch.group_ids.device
    batch.rewards, batch.reward_names = scores.rewards.to(device), scores.names
    batch.reward_weights = [float(r.weight) for r in reward_cfgs]
    batch.reward_failed = scores.failed.to(device)
    return {f"reward/{name}/errors": n for name, n in scores.errors.items()}


def score(reward_cfgs, completions: list[str], examples: list[dict], completion_lengths: list[int]) -> Scores:
    """Score the completions with every configured reward function (one column each). A sample on which
    a function raises or returns a non-finite value is a failure, handled by the reward's `on_error`:
    'drop' (scored 0 and marked in `failed`: the trainer leaves its group out of the update, so the policy
    is not taught to avoid what broke the reward), 'zero' (scored 0 and trained on) or 'raise'. One
    warning per reward and call sums up its failures."""
    columns, names, errors = [], [], {}
    failed = torch.zeros(len(completions), dtype=torch.bool)
    for cfg in reward_cfgs:
        fn = REWARDS.get(cfg.name)
        values, why = _call_safely(fn, completions, examples, completion_lengths, cfg.params)
        bad = torch.tensor([w is not None for w in why], dtype=torch.bool)
        errors[cfg.name] = int(bad.sum())
        if bad.any():
            first = next(w for w in why if w is not None)
            if cfg.on_error == "raise":
                raise RuntimeError(f"reward '{cfg.name}' failed on {errors[cfg.name]} of {len(why)} samples "
                                   f"(first: {first}); set its on_error: drop or zero to carry on")
            action = "their groups are left out of the update" if cfg.on_error == "drop" else "scored 0"
            log.warning("reward '%s' failed on %d of %d samples (first: %s); on_error=%s: %s",
                        cfg.name, errors[cfg.name], len(why), first, cfg.on_error, action)
            if cfg.on_error == "drop":
                failed |= bad
        column = torch.tensor(values, dtype=torch.float32)
        columns.append(torch.where(bad, torch.zeros_like(column), column))
        names.append(cfg.name)
    return Scores(torch.stack(columns, dim=1), names, errors, failed)
