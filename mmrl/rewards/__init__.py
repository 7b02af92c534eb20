"""Reward functions, registered by name and listed in a run's config under `rewards:`.

A reward function takes (completions, examples, completion_lengths, **params) and returns one float
per completion; besides the registered names, `rewards: - name: package.module:function` imports one.
`score` runs the configured ones; a sample a function raises on, or scores NaN/inf, is counted and
handled by the reward's `on_error` (drop its group from the update, score it 0, or stop the run).
"""
from mmrl.rewards.registry import REWARDS, score, score_batch  # noqa: F401
from mmrl.rewards import math, format, choice, xml  # noqa: F401,E402  (registration)
