from __future__ import annotations

import logging

import torch

from mmrl.core.registry import Registry

REWARDS = Registry("reward function")
log = logging.getLogger(__name__)


def _call_safely(name, fn, completions, examples, lengths, params) -> tuple[list[float], int]:
    """Run `fn` on the batch; if it raises, retry one sample at a time and score failures 0."""
    try:
        values = fn(completions, examples=examples, completion_lengths=lengths, **params)
        if len(values) != len(completions):
            raise ValueError(f"returned {len(values)} values for {len(completions)} completions")
        return [float(v) for v in values], 0
    except Exception:  # noqa: BLE001 - a reward bug must not kill a multi-hour run
        pass
    values, errors = [], 0
    for c, e, n in zip(completions, examples, lengths):
        try:
            values.append(float(fn([c], examples=[e], completion_lengths=[n], **params)[0]))
        except Exception as err:  # noqa: BLE001
            errors += 1
            values.append(0.0)
            log.warning("reward '%s' raised %s: %s; scored 0 for this sample", name, type(err).__name__, err)
    return values, errors


def score_batch(reward_cfgs, batch) -> int:
    """Rewards [N, K] of a rollout batch's completions (against its examples) into `batch.rewards` /
    `batch.reward_names`; returns the count of reward errors."""
    rewards, names, errors = score(reward_cfgs, batch.completions_text, batch.examples,
                                   batch.completion_lengths.tolist())
    batch.rewards, batch.reward_names = rewards.to(batch.group_ids.device), names
    return errors


def score(reward_cfgs, completions: list[str], examples: list[dict], completion_lengths: list[int]):
    """Rewards [N, K] (one column per configured function), their names, and the error count."""
    columns, names, errors = [], [], 0
    for cfg in reward_cfgs:
        fn = REWARDS.get(cfg.name)
        values, n_err = _call_safely(cfg.name, fn, completions, examples, completion_lengths, cfg.params)
        columns.append(torch.tensor(values, dtype=torch.float32))
        names.append(cfg.name)
        errors += n_err
    return torch.stack(columns, dim=1), names, errors
