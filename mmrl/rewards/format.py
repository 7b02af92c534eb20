"""Rewards on the shape of a completion: tag format and DAPO's overlong shaping."""
from __future__ import annotations

import re

from mmrl.rewards.registry import REWARDS

THINK_ANSWER = r"^<think>.*?</think>\s*<answer>.*?</answer>$"


MATCH_MODES = ("fullmatch", "match", "search")


@REWARDS.register("format")
def format_reward(completions, examples=None, completion_lengths=None, pattern: str = THINK_ANSWER,
                  mode: str = "fullmatch", strip: bool = True, unique_tags: list | None = None):
    """1.0 if the completion matches `pattern` (regex, DOTALL), else 0. `mode`: Python's re function
    (fullmatch: the whole text; match: from its start; search: anywhere); `strip`: match the text
    with surrounding whitespace removed (lenient, the default) or as generated; `unique_tags`: strings
    that may occur at most once (TW-GRPO's code rejects a second "<think>" or "<answer>").
    The official settings of the recipes that claim them:
      TON (kokolerk/TON grpo.py):     pattern <think>.*?</think>\s*<answer>.*?</answer>, fullmatch, strip false;
      TW-GRPO (grpo.py format_reward): pattern <think>.*?</think>\s*<answer>.*?</answer>[\s!]*$, search,
                                      strip true, unique_tags [<think>, <answer>];
      d1 / IGPO (reward_func.py):      strict ^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$ and
                                      soft <reasoning>.*?</reasoning>\s*<answer>.*?</answer>, match, strip false."""
    if mode not in MATCH_MODES:
        raise ValueError(f"rewards format params.mode: '{mode}' is not one of {list(MATCH_MODES)}")
    matcher = getattr(re.compile(pattern, re.DOTALL), mode)
    out = []
    for c in completions:
        repeated = any(c.count(tag) > 1 for tag in unique_tags or ())
        out.append(1.0 if not repeated and matcher(c.strip() if strip else c) else 0.0)
    return out


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
