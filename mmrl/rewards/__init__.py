"""Reward functions, registered by name and listed in a run's config under `rewards:`.

A reward function takes (completions, examples, completion_lengths, **params) and returns one float
per completion. `score` runs the configured ones; a function that raises is logged and scores 0 for
the affected samples, and the run continues.
"""
from mmrl.rewards.registry import REWARDS, score, score_batch  # noqa: F401
from mmrl.rewards import math, format, choice, xml  # noqa: F401,E402  (registration)
