"""Re-scoring the whole prompt set with fresh rollouts, for samplers that ask for it (VAS's
periodic update, MMR1 Alg. 1: every T steps, N completions of every prompt by the current policy).

Every rank generates the prompts i with i % world == rank, the results are gathered, and every rank
feeds the same complete list to its sampler's `update`, so the samplers stay identical.
"""
from __future__ import annotations

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from mmrl.core.methods.base import METHODS, Method
from mmrl.core.policy import unwrapped_for_generation
from mmrl.rewards import score
from mmrl.rewards.registry import success_column


def rescore_due(sampler, step: int) -> bool:
    """Re-score before 0-based step `step` (step 0: before training, as in the paper)."""
    every = sampler.rescore_every
    return every > 0 and step % every == 0


@torch.no_grad()
def rescore_prompts(cfg, accelerator, adapter, model, examples: list[dict], sampler) -> int:
    """`sampler.rescore_group_size` completions of every prompt, scored by the success reward
    (`rewards[i].success`, default the first), then sampler.update on all of them; returns the completions made."""
    rank, world = accelerator.process_index, accelerator.num_processes
    n = sampler.rescore_group_size
    mine = list(range(rank, len(examples), world))
    per_call = max(1, cfg.trainer.prompts_per_step // world)
    success_reward = cfg.rewards[success_column(cfg.rewards)]
    results = []
    with unwrapped_for_generation(accelerator, model) as policy:
        for start in tqdm(range(0, len(mine), per_call), desc="rescore prompts", leave=False,
                          disable=not accelerator.is_local_main_process):
            chunk = mine[start:start + per_call]
            batch = adapter.generate(policy, [examples[i] for i in chunk], n, cfg.rollout)
            rewards = score([success_reward], batch.completions_text, batch.examples,
                            batch.completion_lengths.tolist()).rewards
            success = rewards[:, 0].clamp(0, 1).view(len(chunk), n).tolist()
            tokens = batch.completion_token_lists()
            results += [(i, success[k], tokens[k * n:(k + 1) * n]) for k, i in enumerate(chunk)]
    if world > 1:
        results = gather_object(results)
    results.sort(key=lambda r: r[0])
    sampler.update([r[0] for r in results], [r[1] for r in results], completions=[r[2] for r in results],
                   rescoring=True)
    return len(results) * n


@METHODS.register("rescore_prompts")
class PeriodicRescoring(Method):
    """Samplers with `rescore_every` > 0 (VAS): before step 0 and every `rescore_every` steps, fresh
    rollouts of every prompt update the sampler's scores."""

    @classmethod
    def active(cls, loop) -> bool:
        return loop.state is not None and loop.state.sampler.rescore_every > 0

    def before_rollout(self, step: int) -> dict:
        loop = self.loop
        if not rescore_due(loop.state.sampler, step):
            return {}
        made = rescore_prompts(loop.cfg, loop.accelerator, loop.adapter, loop.model, loop.examples, loop.state.sampler)
        return {"vas/rescored_completions": made}
