"""IGPO: Inpainting-Guided Policy Optimization (Zhao et al., arXiv 2509.10396, ICLR 2026; official
code facebookresearch/igpo: trainer_igpo.py, utils/generate.py).

When every completion of a group is wrong, the group is rolled out again with chunks of the
reference reasoning fixed in the canvas (inpainting), and correct inpainted samples replace up to
lambda G of the originals (the first slots of the group). Hint layout (`create_spacing_scaled_
inpainting_sequence`): the reference, cut to gen_length - free_tail tokens, is split left to right
into chunks of U{min_chunk..max_chunk} tokens (a shorter tail is dropped); sample g of the group
reveals a fraction eta_g ~ U[eta_low, eta_high] of them (the eta sorted ascending over the group),
hiding int(n (1 - eta)) chunks at random; revealed chunks are placed with their offsets scaled by
f = clamp((gen_length - free_tail) / |ref|, 1, 1.5), gaps capped at max_spacing, cut at the canvas end.
Which hint tokens train (the code): among a sample's hint positions only the max(1, floor(tau n))
with the highest predictive entropy keep their loss; non-hint tokens always train. Replacements are
drawn at random among the group's correct inpainted samples.
Loss scope (`loss_scope`): `answer` (default) trains the tokens up to the first EOS minus the
filtered hints, and GSPO's sequence ratio averages over those; `canvas` is the official code's
(trainer_igpo.py with use_gspo and d1 masking): the loss counts every canvas position minus the
filtered hints (EOS padding included), and the sequence ratio is exp(mean over all T positions),
filtered hints included. (The official code then takes a token-mean of the broadcast sequence loss
over the kept positions; here each sequence weighs 1 / N, seq-mean-token-mean, which differs only by
the filtered hint counts of inpainted rows.) The reference can start with `reference_prefix`
(the official code prepends "<reasoning>\n" to MetaMathQA's response).
Paper and code disagree on the answer: the paper keeps final-answer tokens out of the hints, the
code always reveals the last chunk (`inpaint_last_chunk_end`), which may hold it. `reveal_last_chunk`
picks: False (default) hides the last chunk, as the paper intends; True is the code's behaviour.
"""
from __future__ import annotations

import math
import random

import torch

from mmrl.core.batch import RolloutBatch, group_starts, loss_mask
from mmrl.core.methods import METHODS, Method
from mmrl.core.policy import unwrapped_for_generation
from mmrl.rewards import score_batch
from mmrl.rewards.registry import success_column


def chunk_spans(length: int, min_chunk: int, max_chunk: int, rng: random.Random) -> list[tuple[int, int]]:
    """Left-to-right (start, end) chunks of U{min_chunk..max_chunk} tokens; a tail < min_chunk is dropped."""
    spans, start = [], 0
    while start < length:
        end = start + rng.randint(min_chunk, max_chunk)
        if min(end, length) - start < min_chunk:
            break
        spans.append((start, min(end, length)))
        start = end
    return spans


def hint_canvas(reference: list[int], gen_length: int, eta: float, cfg, rng: random.Random) -> list[int]:
    """[gen_length] token ids of the revealed chunks at their scaled positions, -1 elsewhere."""
    usable = max(gen_length - cfg.free_tail, 0)
    reference = reference[:usable]
    canvas = [-1] * gen_length
    spans = chunk_spans(len(reference), cfg.min_chunk, cfg.max_chunk, rng)
    if not spans:
        return canvas
    hide = set(rng.sample(range(len(spans)), int(len(spans) * (1 - eta))))
    if not cfg.reveal_last_chunk:
        hide.add(len(spans) - 1)
    factor = min(max(usable / len(reference), 1.0), 1.5)
    position, previous_end = None, 0
    for i, (start, end) in enumerate(spans):
        if i in hide:
            continue
        if position is None:  # the first revealed chunk: its offset scaled
            position = math.floor(start * factor)
        else:  # later ones: the hidden stretch before them scaled, capped
            position += min(math.floor((start - previous_end) * factor), cfg.max_spacing)
        for j, token in enumerate(reference[start:end]):
            if position + j < gen_length:
                canvas[position + j] = token
        position += end - start
        previous_end = end
    return canvas


def entropy_filtered_mask(hint_mask: torch.Tensor, entropy: torch.Tensor, fraction: float) -> torch.Tensor:
    """[N, C] loss mask: 1 on non-hint tokens and on the max(1, floor(fraction n)) highest-entropy
    hint tokens of each row (n its hint count), 0 on the other hint tokens."""
    keep = ~hint_mask
    for r in range(hint_mask.shape[0]):
        positions = torch.nonzero(hint_mask[r]).flatten()
        if len(positions):
            k = max(1, math.floor(fraction * len(positions)))
            top = positions[entropy[r, positions].topk(k).indices]
            keep[r, top] = True
    return keep.to(torch.long)


def inpaint(cfg, accelerator, adapter, model, batch: RolloutBatch, step: int) -> tuple[RolloutBatch, dict]:
    """Rescue this rank's all-wrong groups; returns (batch, metrics). The batch gets
    a loss_mask (the entropy filter on hint tokens, within the scope's tokens) whenever inpainting is
    on, and with `loss_scope: canvas` a ratio_mask (every canvas position)."""
    icfg = cfg.inpainting
    if icfg.loss_scope not in ("answer", "canvas"):
        raise ValueError(f"inpainting.loss_scope: '{icfg.loss_scope}' is not 'answer' or 'canvas' (the official code's)")
    success = success_column(cfg.rewards)
    correct = batch.rewards[:, success].cpu() >= icfg.correct_threshold
    starts = group_starts(batch.group_ids.cpu()).tolist()
    bounds = list(zip(starts, starts[1:] + [len(batch)]))
    wrong = [g for g, (a, b) in enumerate(bounds) if not correct[a:b].any()
             and str(batch.examples[a].get("solution", "")).strip()]
    stats = {"igpo/all_wrong_groups": sum(1 for a, b in bounds if not correct[a:b].any()),
             "igpo/rescued_groups": 0, "igpo/replaced_samples": 0}
    for j, name in enumerate(batch.reward_names):  # the policy's own rollouts, before any replacement: the learning curve
        stats[f"igpo/original/{name}/mean"] = batch.rewards[:, j].mean().item()
    canvas_scope = icfg.loss_scope == "canvas"
    if canvas_scope:
        batch.loss_mask = torch.ones_like(batch.completion_mask)
        batch.ratio_mask = torch.ones_like(batch.completion_mask)
    if batch.loss_mask is None:
        batch.loss_mask = batch.completion_mask.clone()
    # entered on every rank, whether or not it has groups to rescue: gathering a sharded (FSDP2) model
    # is a collective, and inside the gathered context the re-generation and entropy forwards need none
    with unwrapped_for_generation(accelerator, model) as policy:
        if not wrong:
            return batch, stats
        gen_length = cfg.rollout.max_new_tokens
        rng = random.Random(cfg.trainer.seed * 1_000_003 + step * 7_919 + accelerator.process_index)
        examples, fixed, sizes = [], [], []
        for g in wrong:
            a, b = bounds[g]
            example = batch.examples[a]
            reference = adapter.tokenizer(icfg.reference_prefix + str(example["solution"]),
                                          add_special_tokens=False)["input_ids"]
            etas = sorted(rng.uniform(icfg.eta_low, icfg.eta_high) for _ in range(b - a))
            fixed += [hint_canvas(reference, gen_length, eta, icfg, rng) for eta in etas]
            examples.append(example)
            sizes.append(b - a)
        redo = adapter.generate(policy, examples, sizes, cfg.rollout, fixed=torch.tensor(fixed))
        score_batch(cfg.rewards, redo)
        rewards = redo.rewards
        redo_starts = group_starts(redo.group_ids).tolist()
        take_rows, put_rows = [], []
        for k, g in enumerate(wrong):
            a, b = bounds[g]
            rows = [redo_starts[k] + j for j in range(sizes[k])
                    if rewards[redo_starts[k] + j, success] >= icfg.correct_threshold]
            rows = sorted(rng.sample(rows, min(len(rows), math.floor(icfg.max_replace_fraction * sizes[k]))))
            take_rows += rows
            put_rows += list(range(a, a + len(rows)))
            stats["igpo/rescued_groups"] += int(bool(rows))
        stats["igpo/replaced_samples"] = len(take_rows)
        if not take_rows:
            return batch, stats
        chosen = redo.select(torch.tensor(take_rows))
        chosen.example_index, chosen.group_ids = batch.example_index[put_rows].cpu(), batch.group_ids[put_rows].cpu()
        chosen.extras["mask_seed"] = batch.extras["mask_seed"][put_rows].cpu()  # the group's shared mask seed
        with torch.no_grad():
            # the first inner iteration's masks
            _, entropy = adapter.log_probs(policy, chosen.to(accelerator.device), with_entropy=True, iteration=0)
    hints = chosen.extras["hint_mask"].cpu()
    scope = torch.ones_like(chosen.completion_mask).cpu() if canvas_scope else loss_mask(chosen).cpu()
    chosen.loss_mask = scope * entropy_filtered_mask(hints & scope.bool(), entropy.cpu(), icfg.entropy_fraction)
    if canvas_scope:
        chosen.ratio_mask = torch.ones_like(chosen.completion_mask).cpu()
    batch = replace_rows(batch, torch.tensor(put_rows), chosen)
    return batch, stats


def replace_rows(batch: RolloutBatch, rows: torch.Tensor, new: RolloutBatch) -> RolloutBatch:
    """`batch` with rows `rows` replaced by the rows of `new` (same group ids and example indices)."""
    keep = torch.ones(len(batch), dtype=torch.bool)
    keep[rows] = False
    order = torch.argsort(torch.cat([torch.nonzero(keep).flatten(), rows]), stable=True)
    merged = RolloutBatch.concat([batch.select(torch.nonzero(keep).flatten()).to("cpu"), new.to("cpu")])
    merged = merged.select(order)
    merged.group_ids = batch.group_ids.cpu()
    return merged.to(batch.group_ids.device)


@METHODS.register("igpo")
class InpaintingGuidedRollouts(Method):
    """`inpainting.enabled`: each rank's all-wrong groups are rescued by inpainted rollouts after the
    rollout (`inpaint`)."""
    counted = ("igpo/all_wrong_groups", "igpo/rescued_groups", "igpo/replaced_samples")

    @classmethod
    def active(cls, loop) -> bool:
        return cls.label(loop.cfg) is not None

    @classmethod
    def label(cls, cfg) -> str | None:
        """'igpo' in a masked diffusion LM run (the family whose config has `inpainting`) that enables it."""
        section = getattr(cfg, "inpainting", None)
        return "igpo" if section is not None and section.enabled else None

    def after_rollout(self, batch, step: int):
        loop = self.loop
        return inpaint(loop.cfg, loop.accelerator, loop.adapter, loop.model, batch, step)
