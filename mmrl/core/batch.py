"""RolloutBatch: everything one step of group-relative RL knows about its samples.

Rows are completions. Rows of one prompt group share a `group_ids` value and are stored next to
each other, so a rank's share of the batch is a contiguous run of whole groups.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RolloutBatch:
    """Token tensors of N completions, N = sum of group sizes.

    prompt_ids / prompt_mask:         [N, P]  left padded (mask 0 on padding)
    completion_ids / completion_mask: [N, C]  right padded; mask 1 up to and including EOS
    group_ids:                        [N]     int, equal within a prompt group
    rewards:                          [N, K]  one column per reward function, named by reward_names
    old_logp / ref_logp:              [N, C]  behaviour-policy and reference log-probs (or None)
    token_weights:                    [N, C]  optional per-token weights (TW-GRPO, GTPO, ...)
    advantages:                       [N]     filled in by the trainer
    extras: adapter-owned tensors with a leading N dimension (pixel values, mask schedules ...);
    examples / completions_text: python-side per-row data (the prompt's example dict, decoded text).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    group_ids: torch.Tensor
    rewards: torch.Tensor | None = None
    reward_names: list[str] = field(default_factory=list)
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    token_weights: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    completions_text: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    def _tensor_fields(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                yield f.name, v

    def to(self, device: torch.device | str) -> "RolloutBatch":
        """A copy with every tensor (extras included) on `device`."""
        moved = {name: t.to(device) for name, t in self._tensor_fields()}
        moved["extras"] = {k: v.to(device) for k, v in self.extras.items()}
        return dataclasses.replace(self, **moved)

    def select(self, rows: torch.Tensor | slice) -> "RolloutBatch":
        """Rows `rows` (a slice or an index tensor) of every per-row field."""
        if isinstance(rows, slice):
            idx = list(range(len(self)))[rows]
        else:
            idx = rows.tolist()
        index = torch.as_tensor(idx, dtype=torch.long)
        taken = {name: t[index.to(t.device)] for name, t in self._tensor_fields()}
        taken["extras"] = {k: v[index.to(v.device)] for k, v in self.extras.items()}
        taken["examples"] = [self.examples[i] for i in idx] if self.examples else []
        taken["completions_text"] = [self.completions_text[i] for i in idx] if self.completions_text else []
        return dataclasses.replace(self, **taken)

    def shard_by_group(self, rank: int, world_size: int) -> "RolloutBatch":
        """This rank's contiguous share of whole groups (groups never straddle ranks).

        The number of groups must divide evenly so every rank does the same number of
        forward passes (DDP needs matching collectives)."""
        groups = torch.unique_consecutive(self.group_ids)
        if len(groups) % world_size:
            raise ValueError(f"{len(groups)} groups cannot be split evenly over {world_size} ranks")
        per_rank = len(groups) // world_size
        mine = groups[rank * per_rank:(rank + 1) * per_rank]
        rows = torch.nonzero(torch.isin(self.group_ids, mine)).squeeze(-1)
        return self.select(rows)

    def micro_batches(self, num: int) -> list["RolloutBatch"]:
        """Split into `num` consecutive micro-batches of equal row count."""
        if len(self) % num:
            raise ValueError(f"batch of {len(self)} rows does not split into {num} equal micro-batches; "
                             "change trainer.gradient_accumulation_steps")
        size = len(self) // num
        return [self.select(slice(i * size, (i + 1) * size)) for i in range(num)]
