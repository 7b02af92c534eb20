"""Rewards on the shape of a completion: tag format and DAPO's overlong shaping."""
from __future__ import annotations

import re

from mmrl.rewards.registry import REWARDS

THINK_ANSWER = r"^<think>.*?</think>\s*<answer>.*?</answer>$"


@REWARDS.register("format")
def format_reward(completions, examples=None, completion_lengths=None, pattern: str = THINK_ANSWER):
    """1.0 if the whole (stripped) completion matches `pattern` (regex, DOTALL), else 0."""
    compiled = re.compile(pattern, re.DOTALL)
    return [1.0 if compiled.fullmatch(c.strip()) else 0.0 for c in completions]


_THOUGHT = re.compile(r"<think>(.*?)</think>", re.DOTALL)


@REWARDS.register("empty_think")
def empty_think(completions, examples=None, completion_lengths=None):
    """1.0 if the completion's <think></think> holds only whitespace (TON's skipped thought), else 0.
    Listed with `weight: 0` it is a metric: reward/empty_think/mean is the skip ratio."""
    out = []
    for c in completions:
        m = _THOUGHT.search(c)
        out.append(1.0 if m is not None and not m.group(1).strip() else 0.0)
    return out


@REWARDS.register("length_penalty")
def overlong_penalty(completions, examples=None, completion_lengths=None, max_length: int = 4096,
                     cache_length: int = 1024, penalty_factor: float = 1.0):
    """DAPO overlong reward shaping (arXiv 2503.14476, eq. 13), L = completion length in tokens:

    R = 0 if L <= L_max - L_cache;  ((L_max - L_cache) - L) / L_cache in the buffer;  -1 beyond L_max;
    all scaled by `penalty_factor`. Added to the task reward through its weight."""
    if completion_lengths is None:
        raise ValueError("length_penalty needs completion_lengths")
    start = max_length - cache_length
    return [penalty_factor * max(min((start - n) / cache_length, 0.0), -1.0) for n in completion_lengths]
