"""RolloutBatch: everything one step of group-relative RL knows about its samples.

Rows are completions. Rows of one prompt group share a `group_ids` value and are stored next to
each other, so a rank's share of the batch is a contiguous run of whole groups.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from mmrl.core.advantages import combine_rewards


def group_starts(group_ids: torch.Tensor) -> torch.Tensor:
    """Indices of the first row of each run of equal consecutive group ids."""
    new = torch.ones_like(group_ids, dtype=torch.bool)
    new[1:] = group_ids[1:] != group_ids[:-1]
    return torch.nonzero(new).flatten()


def group_any(flags: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """[N] bool: rows whose group (consecutive equal `group_ids`) has any row flagged."""
    _, inverse = torch.unique_consecutive(group_ids, return_inverse=True)
    hit = torch.zeros(int(inverse.max()) + 1 if len(inverse) else 0, dtype=torch.bool, device=flags.device)
    hit.index_put_((inverse.to(flags.device),), flags.bool(), accumulate=True)
    return hit[inverse.to(flags.device)]


def dropped_rows(batch: "RolloutBatch") -> torch.Tensor:
    """[N] bool: rows of groups left out of the update because a reward failed on one of them
    (`reward_failed`, rewards with on_error: drop)."""
    if batch.reward_failed is None:
        return torch.zeros(len(batch), dtype=torch.bool, device=batch.group_ids.device)
    return group_any(batch.reward_failed, batch.group_ids)


def pad_sequences(seqs: list[list[int]], pad_value: int = 0, left: bool = False):
    """Token lists -> (ids [n, width], mask [n, width]) padded on the right (or the left)."""
    width = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), width), pad_value, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, q in enumerate(seqs):
        cols = slice(width - len(q), width) if left else slice(0, len(q))
        ids[i, cols], mask[i, cols] = torch.tensor(q, dtype=torch.long), 1
    return ids, mask


def pad_extra(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-row adapter tensors along rows, zero padding every later dimension on the
    right (pixel patches, image grids of prompts with different image sizes)."""
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for t in tensors:
        pad = [p for d in reversed(range(1, t.dim())) for p in (0, shape[d - 1] - t.shape[d])]
        padded.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
    return torch.cat(padded)


@dataclass
class RolloutBatch:
    """Token tensors of N completions, N = sum of group sizes.

    prompt_ids / prompt_mask:         [N, P]  left padded (mask 0 on padding)
    completion_ids / completion_mask: [N, C]  right padded; mask 1 up to and including EOS
    group_ids:                        [N]     int, equal within a prompt group
    example_index:                    [N]     the dataset index of the row's prompt (set by the trainer)
    rewards:                          [N, K]  one column per reward function, named by reward_names, weighted
                                              by reward_weights (empty: all 1) in `total_reward()`
    reward_failed:                    [N]     bool: a reward with on_error: drop failed on the row
    old_logp / ref_logp:              [N, C]  behaviour-policy and reference log-probs (or None)
    old_logp_by_iteration / ref_logp_by_iteration: [N, mu, C] the same per inner iteration, for adapters
                                              whose scoring draws fresh masks per iteration (or None)
    token_weights:                    [N, C]  optional per-token weights (TW-GRPO, GTPO, ...)
    loss_mask:                        [N, C]  the tokens the loss counts, where a method sets them (None:
                                              the completion mask; see `loss_mask()`)
    ratio_mask:                       [N, C]  the tokens a sequence-level ratio averages over (None: the
                                              loss mask)
    advantages:                       [N]     filled in by the trainer
    extras: adapter-owned tensors with a leading N dimension (pixel values, mask schedules ...);
    examples / completions_text: python-side per-row data (the prompt's example dict, decoded text).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    group_ids: torch.Tensor
    example_index: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    reward_names: list[str] = field(default_factory=list)
    reward_weights: list[float] = field(default_factory=list)
    reward_failed: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    token_weights: torch.Tensor | None = None
    old_logp_by_iteration: torch.Tensor | None = None
    ref_logp_by_iteration: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None
    ratio_mask: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    completions_text: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    def total_reward(self) -> torch.Tensor:
        """[N] the combined reward: the reward columns weighted by `reward_weights`."""
        return combine_rewards(self.rewards, self.reward_weights or None)

    def completion_token_lists(self) -> list[list[int]]:
        """Each row's completion token ids without padding."""
        ids, mask = self.completion_ids.cpu(), self.completion_mask.cpu().bool()
        return [ids[j][mask[j]].tolist() for j in range(len(self))]

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

    def micro_batches(self, num: int, whole_groups: bool = False) -> list["RolloutBatch"]:
        """Split into `num` consecutive micro-batches of (nearly) equal row count; with `whole_groups`
        the cuts fall between groups (losses that compare completions of a group need that)."""
        if whole_groups:
            starts = group_starts(self.group_ids).tolist()
            if len(starts) < num:
                raise ValueError(f"{len(starts)} groups do not split into {num} micro-batches of whole groups; "
                                 "lower trainer.gradient_accumulation_steps")
            bounds = [starts[len(starts) * k // num] for k in range(num)] + [len(self)]
        else:
            if len(self) < num:
                raise ValueError(f"batch of {len(self)} rows does not split into {num} micro-batches; "
                                 "lower trainer.gradient_accumulation_steps")
            bounds = [len(self) * k // num for k in range(num + 1)]
        return [self.select(slice(bounds[k], bounds[k + 1])) for k in range(num)]

    @staticmethod
    def concat(batches: list["RolloutBatch"]) -> "RolloutBatch":
        """Rows of several batches in order (prompts re-padded on the left, completions on the right);
        group ids are renumbered so groups of different batches stay distinct."""
        def pad(tensors, left):
            width = max(t.shape[1] for t in tensors)
            out = []
            for t in tensors:
                fill = t.new_zeros(t.shape[0], width - t.shape[1])
                out.append(torch.cat([fill, t] if left else [t, fill], 1))
            return torch.cat(out)

        offset, group_ids = 0, []
        for b in batches:
            _, inverse = torch.unique_consecutive(b.group_ids, return_inverse=True)
            group_ids.append(inverse + offset)
            offset += int(inverse.max()) + 1 if len(b) else 0
        first = batches[0]
        optional = {}
        for name in ("example_index", "rewards", "reward_failed", "advantages"):
            values = [getattr(b, name) for b in batches]
            optional[name] = torch.cat(values) if all(v is not None for v in values) else None
        for name in ("old_logp", "ref_logp", "token_weights"):
            values = [getattr(b, name) for b in batches]
            optional[name] = pad(values, left=False) if all(v is not None for v in values) else None
        for name in ("old_logp_by_iteration", "ref_logp_by_iteration"):
            values = [getattr(b, name) for b in batches]
            optional[name] = pad_extra(values) if all(v is not None for v in values) else None
        for name in ("loss_mask", "ratio_mask"):  # where some batches set one, the others' default is spelled out
            values = [getattr(b, name) for b in batches]
            optional[name] = None if all(v is None for v in values) else \
                pad([v if v is not None else loss_mask(b) for v, b in zip(values, batches)], left=False)
        return dataclasses.replace(
            first, prompt_ids=pad([b.prompt_ids for b in batches], True),
            prompt_mask=pad([b.prompt_mask for b in batches], True),
            completion_ids=pad([b.completion_ids for b in batches], False),
            completion_mask=pad([b.completion_mask for b in batches], False),
            group_ids=torch.cat(group_ids), **optional,
            extras={k: pad_extra([b.extras[k] for b in batches]) for k in first.extras},
            examples=[e for b in batches for e in b.examples],
            completions_text=[t for b in batches for t in b.completions_text])


def loss_mask(batch: RolloutBatch) -> torch.Tensor:
    """The tokens the loss counts: the completion mask, or `batch.loss_mask` where a method sets one
    (a masked diffusion ELBO counts the whole generated canvas, EOS padding included; IGPO drops
    low-entropy hint tokens; Co-GRPO picks the policy an update trains)."""
    if batch.loss_mask is not None:
        return batch.loss_mask.to(batch.completion_mask)
    return batch.completion_mask
