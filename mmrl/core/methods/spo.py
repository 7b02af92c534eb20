"""SPO's KL-adaptive forgetting factor (Xu & Ding, "Single-stream Policy Optimization", arXiv 2509.13232,
sec. 3.2), the loop side of `algorithm.advantage: spo` with `advantage_params.rho: adaptive` (the
estimator and its tracker are mmrl.core.advantages.SPOTracker).

Before the advantages, each prompt seen before gets D(x) = token-mean |log pi_prev(y') - log pi_now(y')|
of the completion y' stored at its previous visit, which sets how fast its success estimate forgets;
after the update one completion per prompt is stored with its log-probs under the new policy. The
tracker (with the stored completions) is the estimator's state, checkpointed with the sampler.
"""
from __future__ import annotations

import inspect

import torch

from mmrl.core.adapter import iteration_kwargs
from mmrl.core.advantages import single_stream_advantages
from mmrl.core.batch import RolloutBatch, group_starts, pad_sequences
from mmrl.core.methods.base import METHODS, Method, merge_across_ranks
from mmrl.core.policy import unwrapped_for_generation


def stored_batch(entries: list[dict], device) -> RolloutBatch:
    """A batch of stored (prompt, completion) token lists, prompts left padded."""
    prompt_ids, prompt_mask = pad_sequences([e["prompt"] for e in entries], left=True)
    completion_ids, completion_mask = pad_sequences([e["completion"] for e in entries])
    return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                        completion_mask=completion_mask, group_ids=torch.arange(len(entries))).to(device)


@torch.no_grad()
def spo_divergence(accelerator, adapter, model, batch: RolloutBatch, tracker, rows: int,
                   mask_iteration: int = 0) -> dict:
    """SPO's D(x) for this step's prompts: token-mean |log pi_prev(y') - log pi_now(y')| of the
    completion y' stored at the prompt's previous visit (merged over ranks)."""
    seen = [i for i in dict.fromkeys(batch.example_index.tolist()) if i in tracker.last]
    iteration = iteration_kwargs(adapter, mask_iteration)
    local = {}
    with unwrapped_for_generation(accelerator, model) as policy:
        for start in range(0, len(seen), rows):
            chunk = seen[start:start + rows]
            entries = [tracker.last[i] for i in chunk]
            now = adapter.log_probs(policy, stored_batch(entries, accelerator.device), **iteration).cpu()
            for j, (i, e) in enumerate(zip(chunk, entries)):
                before = torch.tensor(e["logp"])
                local[i] = (before - now[j, :len(before)]).abs().mean().item()
    return merge_across_ranks(accelerator, local)


@torch.no_grad()
def spo_store_last(accelerator, adapter, model, batch: RolloutBatch, tracker, rows: int,
                   mask_iteration: int = 0) -> None:
    """After the update: keep one completion per prompt with its log-probs under the new policy."""
    if batch.extras:
        raise NotImplementedError("spo with rho='adaptive' re-scores stored completions from token ids only; "
                                  "this adapter needs extras (images/video): use advantage_params.rho: constant")
    firsts = group_starts(batch.group_ids)
    iteration = iteration_kwargs(adapter, mask_iteration)
    local = {}
    with unwrapped_for_generation(accelerator, model) as policy:
        for start in range(0, len(firsts), rows):
            part = batch.select(firsts[start:start + rows].cpu())
            logp = adapter.log_probs(policy, part, **iteration).cpu()
            for j in range(len(part)):
                pm, cm = part.prompt_mask[j].bool(), part.completion_mask[j].bool()
                local[int(part.example_index[j])] = {
                    "prompt": part.prompt_ids[j][pm].tolist(), "completion": part.completion_ids[j][cm].tolist(),
                    "logp": logp[j][cm.cpu()].tolist()}
    tracker.last.update(merge_across_ranks(accelerator, local))


@METHODS.register("spo_adaptive_forgetting")
class SPOAdaptiveForgetting(Method):
    """D(x) into the estimator before the advantages; the stored completions refreshed after the update.
    Stored completions are scored with the last inner update's masks (adapters that draw fresh masks)."""

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.sampler.name == "spo_priority" and cfg.algorithm.advantage != "spo":
            raise ValueError("sampler.name=spo_priority reads the SPO tracker: set algorithm.advantage: spo")

    @classmethod
    def active(cls, loop) -> bool:
        a = loop.cfg.algorithm
        default = inspect.signature(single_stream_advantages).parameters["rho"].default
        return a.advantage == "spo" and a.advantage_params.get("rho", default) == "adaptive"

    def _scoring(self) -> dict:
        cfg = self.loop.cfg
        return {"tracker": self.loop.state.advantage, "rows": max(1, cfg.trainer.logprob_chunk_rows),
                "mask_iteration": cfg.algorithm.num_iterations - 1}

    def advantage_context(self, batch) -> dict:
        loop = self.loop
        return {"divergence": spo_divergence(loop.accelerator, loop.adapter, loop.model, batch, **self._scoring())}

    def after_update(self, batch) -> dict:
        loop = self.loop
        spo_store_last(loop.accelerator, loop.adapter, loop.model, batch, **self._scoring())
        return {}
