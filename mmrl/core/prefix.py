"""Shared-prefix group forward (the Prefix Grouper idea, arXiv 2506.05433): the G completions of a
prompt are scored in one packed row, [prompt, completion_1, ..., completion_G], where the prompt is
encoded once and every completion attends to it and, causally, to itself only. With each completion's
positions continuing from the prompt's (as in its own row), every completion token sees exactly the
keys, values and positions it sees in the plain per-sample forward, so the logits and the parameters'
gradients are the plain path's (up to float summation order), while the prompt's tokens go through
the model once per group instead of G times.

Modality-agnostic: it packs token ids, builds the 4-D boolean attention mask and the position ids,
and maps the packed logits back to the plain [N, C] layout. Models must accept a 4-D boolean
`attention_mask` (True = attend) used as given, with explicit `position_ids` (transformers' eager
and sdpa attention do; flash-attention kernels take no arbitrary masks). Adapters pack a micro-batch
only when `packing_pays` (the packed row's dense attention can outweigh the saved prompt tokens).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mmrl.core.batch import group_starts

log = logging.getLogger(__name__)
MASKABLE_ATTENTION = ("eager", "sdpa")


@dataclass
class PackedGroups:
    """The packed layout: `spans` per packed row (the prompt's real columns in the batch's prompt
    block, [(batch row, packed start) of each completion]), `prompt_rows` [R]: the batch row each
    packed row took its prompt from, `prompt_len` [R], `length` L, `row` [N]: each completion's packed
    row, `source` [N, C]: the packed position whose logits predict completion token j. Then the
    packed tensors: input_ids / position_ids [R, L], attention [R, 1, L, L] (bool)."""

    spans: list
    prompt_rows: torch.Tensor
    prompt_len: torch.Tensor
    length: int
    row: torch.Tensor
    source: torch.Tensor
    input_ids: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    attention: torch.Tensor | None = None

    def pack(self, values: torch.Tensor, fill=0) -> torch.Tensor:
        """[..., R, L] from per-row values [..., N, W + C] laid out as the batch's rows (W prompt
        columns, then C completion columns): each packed row takes its prompt's real columns from
        the group's first row and each completion from that completion's row; `fill` elsewhere."""
        width = self.source.shape[1]
        prompt_width = values.shape[-1] - width
        out = values.new_full((*values.shape[:-2], len(self.spans), self.length), fill)
        for g, (columns, completions) in enumerate(self.spans):
            out[..., g, :len(columns)] = values[..., int(self.prompt_rows[g]), columns]
            for r, start in completions:
                out[..., g, start:start + width] = values[..., r, prompt_width:]
        return out


def pack_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                completion_mask: torch.Tensor, group_ids: torch.Tensor, pad_id: int = 0) -> PackedGroups:
    """Pack each run of consecutive rows with the same group id (their prompts must be equal) into one
    row: the prompt's real (unpadded) tokens, then every completion at its full width C."""
    device = completion_ids.device
    n, width = completion_ids.shape
    starts = group_starts(group_ids.cpu()).tolist()
    bounds = list(zip(starts, starts[1:] + [n]))
    spans, lengths = [], []
    row_of = torch.zeros(n, dtype=torch.long, device=device)
    in_group = torch.zeros(n, dtype=torch.long, device=device)  # i for the group's i-th completion
    source = torch.zeros(n, width, dtype=torch.long, device=device)
    steps = torch.arange(width, device=device)
    for g, (a, b) in enumerate(bounds):
        columns = torch.nonzero(prompt_mask[a].bool()).flatten()
        if not torch.equal(prompt_ids[a:b, columns], prompt_ids[a, columns].expand(b - a, -1)):
            raise ValueError(f"rows {a}..{b - 1} share group id {int(group_ids[a])} but not their prompt")
        p = len(columns)
        spans.append((columns, [(r, p + i * width) for i, r in enumerate(range(a, b))]))
        lengths.append(p + (b - a) * width)
        for i, (r, start) in enumerate(spans[-1][1]):
            row_of[r], in_group[r] = g, i
            source[r] = torch.where(steps == 0, p - 1, start + steps - 1)
    packed = PackedGroups(spans=spans, prompt_rows=torch.tensor([a for a, _ in bounds], device=device),
                          prompt_len=torch.tensor([len(c) for c, _ in spans], device=device), length=max(lengths),
                          row=row_of, source=source)
    prompt_count = prompt_mask.sum(-1, keepdim=True)
    packed.input_ids = packed.pack(torch.cat([prompt_ids, completion_ids], dim=1), pad_id)
    # each completion continues from its prompt: positions 0..P-1, then P + j
    packed.position_ids = packed.pack(torch.cat([prompt_mask.cumsum(-1) - 1, prompt_count + steps], dim=1).long())
    key_ok = packed.pack(torch.cat([prompt_mask, completion_mask], dim=1).bool(), False)  # real tokens
    # -1 on prompts and padding, i on the i-th completion: a completion attends within its own block
    block = packed.pack(torch.cat([torch.full_like(prompt_ids, -1), in_group[:, None].expand(n, width)], dim=1), -1)
    q = torch.arange(packed.length, device=device)
    causal = q[None, :, None] >= q[None, None, :]
    is_prompt_key = (q[None, :] < packed.prompt_len[:, None])[:, None, :]
    same_block = (block[:, :, None] == block[:, None, :]) & (block[:, :, None] >= 0)
    attention = causal & key_ok[:, None, :] & (is_prompt_key | same_block)
    attention |= torch.eye(packed.length, dtype=torch.bool, device=device)[None]  # padding rows attend to themselves
    packed.attention = attention[:, None]
    return packed


def first_kept(packed: PackedGroups) -> int:
    """The first packed position whose logits are needed (for logits_to_keep)."""
    return int(packed.prompt_len.min()) - 1


def unpack_logits(logits: torch.Tensor, packed: PackedGroups, offset: int = 0) -> torch.Tensor:
    """[N, C, V] logits predicting each completion token, from packed logits [R, L - offset, V] that
    start at packed position `offset`."""
    return logits[packed.row[:, None], packed.source - offset]


def shares_prefixes(group_ids: torch.Tensor) -> bool:
    """Whether any group has several rows (otherwise packing saves nothing)."""
    return len(group_starts(group_ids.cpu())) < len(group_ids)


def packing_pays(prompt_mask: torch.Tensor, completion_width: int, group_ids: torch.Tensor, hidden_size: int) -> bool:
    """Whether the packed forward costs fewer FLOPs than the plain one. Per layer, a token costs about
    24 d^2 (projections and MLP) and a (query, key) pair about 4 d (dense masked attention), so the
    cost in token units is tokens + pairs / (6 d). Packing saves the G - 1 repeated prompts but puts
    the G completions in one row, whose dense attention grows with (P + G C)^2: with long completions
    and a short prompt it can cost more than G separate rows."""
    lengths = prompt_mask.sum(-1).tolist()
    starts = group_starts(group_ids.cpu()).tolist()
    plain = packed = 0.0
    for a, b in zip(starts, starts[1:] + [len(group_ids)]):
        p, g = lengths[a], b - a
        plain += g * ((p + completion_width) + (p + completion_width) ** 2 / (6 * hidden_size))
        packed += (p + g * completion_width) + (p + g * completion_width) ** 2 / (6 * hidden_size)
    return packed < plain


def worth_packing(batch, model) -> bool:
    """`packing_pays` for a RolloutBatch at the model's hidden size (False when no group has two rows:
    packing then costs exactly the plain forward)."""
    return packing_pays(batch.prompt_mask, batch.completion_ids.shape[1], batch.group_ids, hidden_size_of(model))


def hidden_size_of(model) -> int:
    """The (text) hidden size of a model, DDP-wrapped or not."""
    config = getattr(model, "module", model).config
    return getattr(config, "hidden_size", None) or config.get_text_config().hidden_size


def use_prefix_sharing(enabled: bool, model) -> bool:
    """`enabled` where the model's attention takes a 4-D mask as given (eager, sdpa); off, with a
    warning, for flash-attention kernels."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if enabled and implementation not in MASKABLE_ATTENTION:
        log.warning("trainer.prefix_sharing: off, %s attention takes no 4-D masks (use sdpa to share prompts)",
                    implementation)
        return False
    return enabled
