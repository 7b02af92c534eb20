"""Shared-prefix group forward (the Prefix Grouper idea, arXiv 2506.05433): the G completions of a
prompt are scored in one packed row, [prompt, completion_1, ..., completion_G], where the prompt is
encoded once and every completion attends to it and, causally, to itself only. With each completion's
positions continuing from the prompt's (as in its own row), every completion token sees exactly the
keys, values and positions it sees in the plain per-sample forward, so the logits and the parameters'
gradients are the plain path's (up to float summation order), while the prompt's tokens go through
the model once per group instead of G times.

Modality-agnostic: it packs token ids, builds the 4-D attention masks and the position ids, and
maps the packed logits back to the plain [N, C] layout. The model gets its masks in the form its
attention adds them (`model_attention_mask`): boolean for sdpa, an additive float mask (0 / the
dtype's minimum) for eager attention, which adds the mask to its scores, and one mask per layer type
(a {layer type: mask} mapping, as transformers' Qwen2 / Mistral / Gemma-style models accept) where
sliding-window layers see only the last `sliding_window` tokens of their own sequence, counted in the
positions each token has in its plain row. Flash-attention kernels take no arbitrary masks, and
chunked or other layer types are not reproduced: `packing_blocker` names why packing is off. Adapters
pack a micro-batch only when `packing_pays` (the packed row's dense attention can outweigh the saved
prompt tokens) and every prompt has at least one token.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mmrl.core.batch import group_starts
from mmrl.models.introspect import (attention_implementation, attention_layer_types, hidden_size_of,
                                   text_config_of)

log = logging.getLogger(__name__)
MASKABLE_ATTENTION = ("eager", "sdpa")
PACKABLE_LAYERS = ("full_attention", "sliding_attention")


@dataclass
class PackedGroups:
    """The packed layout: `spans` per packed row (the prompt's real columns in the batch's prompt
    block, [(batch row, packed start) of each completion]), `prompt_rows` [R]: the batch row each
    packed row took its prompt from, `prompt_len` [R], `length` L, `row` [N]: each completion's packed
    row, `source` [N, C]: the packed position whose logits predict completion token j. Then the
    packed tensors: input_ids [R, L]; token_index [R, L], each token's index in its own plain row
    without padding (a text model's position ids; sliding windows are measured in it); attention
    [R, 1, L, L] (bool, True = attend: the packed structure, before any layer's window)."""

    spans: list
    prompt_rows: torch.Tensor
    prompt_len: torch.Tensor
    length: int
    row: torch.Tensor
    source: torch.Tensor
    input_ids: torch.Tensor | None = None
    token_index: torch.Tensor | None = None
    attention: torch.Tensor | None = None

    @property
    def position_ids(self) -> torch.Tensor:
        """1-D rope positions of a text model: the token's index in its plain row."""
        return self.token_index

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
        if p == 0:  # the first completion token would be predicted from another row's last position
            raise ValueError(f"rows {a}..{b - 1} have an empty prompt: nothing to predict their first token from; "
                             "score them unpacked")
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
    packed.token_index = packed.pack(torch.cat([prompt_mask.cumsum(-1) - 1, prompt_count + steps], dim=1).long())
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
    24 d^2 (projections and MLP) and a (query, key) pair about 4 d (dense masked attention), so a row
    of width w costs w + w^2 / (6 d) token units. Both forwards pad their rows to the widest one: the
    plain forward runs N rows of the prompt block's width plus C, the packed one R rows (one per
    group) of the longest packed row, max_g (P_g + G_g C). Packing saves the G - 1 repeated prompts
    but puts the G completions in one row, whose dense attention grows with (P + G C)^2: with long
    completions and a short prompt it can cost more than G separate rows. (Speed only: the packed
    row's [L, L] mask and attention scores also take more memory than G rows of P + C.)"""
    lengths = prompt_mask.sum(-1).tolist()
    starts = group_starts(group_ids.cpu()).tolist()
    packed_width = max(lengths[a] + (b - a) * completion_width
                       for a, b in zip(starts, starts[1:] + [len(group_ids)]))

    def cost(rows: int, width: int) -> float:
        return rows * (width + width ** 2 / (6 * hidden_size))

    return cost(len(starts), packed_width) < cost(len(group_ids), prompt_mask.shape[1] + completion_width)


def worth_packing(batch, model) -> bool:
    """`packing_pays` for a RolloutBatch at the model's hidden size; False when no group has two rows
    (packing then costs exactly the plain forward) or a prompt is empty (its first completion token
    has no position to be predicted from in a packed row)."""
    if not shares_prefixes(batch.group_ids) or bool((batch.prompt_mask.sum(-1) == 0).any()):
        return False
    return packing_pays(batch.prompt_mask, batch.completion_ids.shape[1], batch.group_ids, hidden_size_of(model))


def packing_blocker(model) -> str | None:
    """Why the packed forward cannot give this model's plain logits, or None when it can: the attention
    must take a 4-D mask as given (eager, sdpa) and every layer must be full or sliding-window attention
    (chunked attention and other patterns are not reproduced)."""
    config = text_config_of(model)
    implementation = attention_implementation(model)
    if implementation not in MASKABLE_ATTENTION:
        return f"{implementation} attention takes no 4-D masks (use sdpa or eager to share prompts)"
    other = sorted(set(attention_layer_types(config)) - set(PACKABLE_LAYERS))
    if other:
        return f"layer types {other} are not reproduced by the packed masks (only {list(PACKABLE_LAYERS)})"
    return None


def model_attention_mask(packed: PackedGroups, model):
    """The packed attention in the form the model's attention layers take it: boolean for sdpa, an
    additive float mask (0 where attended, the dtype's minimum elsewhere) for eager attention, which
    adds the mask to its scores (a boolean mask there would add 1 / 0 and mask nothing). Sliding-window
    layers attend only to keys fewer than `sliding_window` tokens back in their own sequence (q - k <
    W, as transformers' sliding masks, counted in `token_index`); with several layer types the model
    gets a {layer type: mask} mapping, as transformers' models with mixed layers accept."""
    reason = packing_blocker(model)
    if reason is not None:
        raise ValueError(f"prefix sharing cannot score this model: {reason}")
    config = text_config_of(model)
    masks = {}
    for kind in dict.fromkeys(attention_layer_types(config)):
        mask = packed.attention
        if kind == "sliding_attention":
            distance = packed.token_index[:, :, None] - packed.token_index[:, None, :]
            mask = mask & (distance < config.sliding_window)[:, None]  # the diagonal stays: no empty query row
        if attention_implementation(model) == "eager":
            dtype = getattr(model, "module", model).get_input_embeddings().weight.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        masks[kind] = mask
    return next(iter(masks.values())) if len(masks) == 1 else masks


def use_prefix_sharing(enabled: bool, model) -> bool:
    """`enabled` where `packing_blocker` finds nothing; off, with a warning naming the reason, else."""
    reason = packing_blocker(model) if enabled else None
    if reason is not None:
        log.warning("trainer.prefix_sharing: off, %s", reason)
        return False
    return enabled
