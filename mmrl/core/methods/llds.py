"""LLDS, the likelihood-preserving regulariser (`algorithm.llds_coef` > 0; the penalty itself is
mmrl.core.losses.likelihood_displacement_penalty): from the second inner update on, tokens of responses whose likelihood
fell below the behaviour policy's are pulled back. Its denominator, the gated tokens of the whole
optimizer batch on every rank, depends on the current policy, so it is counted before each inner
update after the first, in a forward without gradient.
"""
from __future__ import annotations

import torch

from mmrl.core import losses
from mmrl.core.adapter import iteration_kwargs
from mmrl.core.batch import RolloutBatch, loss_mask
from mmrl.core.methods.base import METHODS, Method


@torch.no_grad()
def llds_active_tokens(cfg, accelerator, adapter, model, chunks: list[RolloutBatch], iteration: int) -> float:
    """LLDS's denominator at this inner iteration: the gated tokens of every micro-batch on every rank
    (divided by the number of ranks, as the other denominators), from a forward without gradient
    before the update's first micro-batch, since the gates depend on the current policy."""
    count = 0.0
    for mb in chunks:
        logp = adapter.log_probs(model, mb, **iteration_kwargs(adapter, iteration))
        count += float(losses.llds_gate(logp, mb.old_logp, loss_mask(mb).to(logp.dtype), mb.advantages,
                                        cfg.algorithm.llds_nonneg_advantage).sum())
    total = accelerator.reduce(torch.tensor(count, device=accelerator.device), "sum")
    return float(total) / accelerator.num_processes


@METHODS.register("llds")
class LLDS(Method):
    """The LLDS term in the loss of inner updates 2..mu (it is 0 on-policy, where pi = pi_old)."""
    later_iteration_stats = ("llds/penalty", "llds/active_tokens")

    @classmethod
    def check(cls, cfg) -> None:
        a = cfg.algorithm
        if a.llds_coef < 0:
            raise ValueError("algorithm.llds_coef must be >= 0")
        if a.llds_coef > 0 and a.num_iterations < 2:
            raise ValueError("algorithm.llds_coef > 0 has no effect on-policy (the LLDS gates compare to the "
                             "behaviour policy): set algorithm.num_iterations >= 2")

    @classmethod
    def active(cls, loop) -> bool:
        return loop.cfg.algorithm.llds_coef > 0

    def before_iteration(self, chunks: list, iteration: int) -> None:
        loop = self.loop
        self.tokens = llds_active_tokens(loop.cfg, loop.accelerator, loop.adapter, loop.model, chunks, iteration) \
            if iteration > 0 else None

    def loss_terms(self, micro_batch, iteration: int) -> dict:
        if iteration == 0:
            return {}
        a = self.loop.cfg.algorithm
        return {"llds_coef": a.llds_coef, "llds_nonneg_advantage": a.llds_nonneg_advantage,
                "llds_tokens": self.tokens, "llds_advantages": micro_batch.advantages}
