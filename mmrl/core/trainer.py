"""The group-relative training loop on HuggingFace accelerate: DDP, or FSDP2 (`trainer.sharding: fsdp2`,
mmrl.core.sharding); accelerate's own FSDP and DeepSpeed are refused.

One step:  the sampler draws the global prompts (and their group sizes) -> each rank generates its
share of groups (adapter.generate) and scores them (configured reward functions; a refilling
sampler drops degenerate groups and draws again) -> optional per-rank rewrites of the scored groups
(the `after_rollout` hooks of the run's methods, mmrl.core.methods) ->
the rows of all ranks are gathered and the advantages computed over the whole batch, updating the
stateful estimator and sampler identically on every rank -> token weights, old / reference
log-probs (per inner update for adapters whose scoring draws fresh masks) -> `num_iterations`
policy updates (loss by name, gradient accumulation over micro-batches) -> metrics, checkpoint.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, ProjectConfiguration, gather_object, set_seed
from tqdm.auto import tqdm

from mmrl.core import advantages as advantage_estimators
from mmrl.core import checkpoint, losses, sharding
from mmrl.core.adapter import adapter_option, assert_adapter, iteration_kwargs
from mmrl.core import samplers
from mmrl.core import weighting as token_weighting
from mmrl.core.advantages import combine_rewards, group_stats
from mmrl.core.batch import RolloutBatch, dropped_rows, group_starts, loss_mask
from mmrl.core.logprobs import selective_log_softmax
from mmrl.core.methods import METHODS, Loop, build_methods, check_methods
from mmrl.core.metrics import MetricsLog
from mmrl.core.policy import reference_policy, unwrapped_for_generation
from mmrl.core.run_dir import claim_output_dir
from mmrl.core.sft import supervised_warmup
from mmrl.core.throughput import FlopCounter, peak_tflops, step_throughput
from mmrl.data import row_label
from mmrl.eval import load_benchmarks
from mmrl.eval.during_training import eval_cache_root, evaluate_policy
from mmrl.modalities import shape_keys as family_shape_keys
from mmrl.rewards import REWARDS, score_batch
from mmrl.rewards.registry import ON_ERROR, REWARD_ARGS, success_column

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- setup helpers
def end_processes() -> None:
    """Tear down the process group at the end of a launched script, so every rank exits cleanly: a
    barrier first (no rank closes its connections while another is still in its last collective),
    then the groups destroyed, then a garbage collection while the interpreter is fully alive (gloo's
    worker threads can hold work objects with Python tensors; freed during interpreter finalization
    they abort the process: 'terminate called without an active exception', pytorch PR 179291).
    A no-op in a single process."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    PartialState().destroy_process_group()
    gc.collect()


def make_accelerator(cfg) -> Accelerator:
    trackers = list(cfg.trainer.log_with)
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS
    unknown = [t for t in trackers if t not in LOGGER_TYPE_TO_CLASS]
    if unknown:
        raise ValueError(f"trainer.log_with: {unknown} not a tracker accelerate knows; valid: {sorted(LOGGER_TYPE_TO_CLASS)}")
    project = ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "trackers"))
    accelerator = Accelerator(mixed_precision=cfg.trainer.mixed_precision, log_with=trackers or None,
                              project_config=project if trackers else None)
    missing = [t for t in trackers if t not in [str(getattr(x, "value", x)) for x in accelerator.log_with]]
    if missing:
        raise ValueError(f"trainer.log_with: {missing} not installed: pip install {' '.join(missing)}")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise RuntimeError(
            f"the launcher started WORLD_SIZE={launched} processes but each sees world_size="
            f"{accelerator.num_processes}: they would train unsynchronised copies. On CPU launch with "
            "`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ...`")
    if accelerator.distributed_type == DistributedType.FSDP:
        raise NotImplementedError("an accelerate config with fsdp_config: mmrl shards the model itself. Launch with "
                                  "a plain multi-GPU config (configs/accelerate/fsdp2_8gpu.yaml) and set "
                                  "trainer.sharding: fsdp2")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # with gradient accumulation accelerate's backward steps the engine on every micro-batch, and a
        # deep copy of a ZeRO-3 model (the reference) holds only its shards: neither is tested
        raise NotImplementedError("DeepSpeed is not supported: its engine steps inside backward on every "
                                  "micro-batch and its ZeRO-3 shards break the reference copy. For sharded "
                                  "training set trainer.sharding: fsdp2 and launch with a config without "
                                  "deepspeed_config (configs/accelerate/fsdp2_8gpu.yaml)")
    return accelerator


def validate(cfg, world_size: int) -> None:
    """Config errors that need more than one field, named with the fix."""
    t, a = cfg.trainer, cfg.algorithm
    if t.prompts_per_step % world_size:
        raise ValueError(f"trainer.prompts_per_step={t.prompts_per_step} must be divisible by the "
                         f"{world_size} processes")
    local_rows = t.prompts_per_step // world_size * cfg.rollout.group_size
    if local_rows < t.gradient_accumulation_steps:
        raise ValueError(f"trainer.gradient_accumulation_steps={t.gradient_accumulation_steps} exceeds the "
                         f"{local_rows} completions per process (prompts_per_step / processes * group_size)")
    if a.num_iterations < 1 or a.beta < 0:
        raise ValueError("algorithm.num_iterations must be >= 1 and algorithm.beta >= 0")
    if cfg.rollout.group_size < 2 and not advantage_estimators.ADVANTAGES.flag(a.advantage, "single_stream"):
        raise ValueError(f"rollout.group_size={cfg.rollout.group_size}: advantage '{a.advantage}' is "
                         "group-relative and gives every completion 0 with one completion per prompt")
    advantage_estimators.ADVANTAGES.check_params(a.advantage, a.advantage_params, "algorithm.advantage_params",
                                                 skip=advantage_estimators.CONTEXT_ARGS)
    losses.LOSSES.check_params(a.loss, a.loss_params, "algorithm.loss_params", skip=losses.CONTEXT_ARGS)
    samplers.SAMPLERS.check_params(cfg.sampler.name, cfg.sampler.params, "sampler.params", skip=samplers.BUILT_IN_ARGS)
    if a.token_weighting is not None:
        token_weighting.WEIGHTINGS.check_params(a.token_weighting, a.token_weighting_params,
                                                "algorithm.token_weighting_params")
    losses.AGGREGATIONS.get(a.aggregation)
    losses.KL_ESTIMATORS.get(a.kl_estimator)
    validate_kl_and_aggregation(a)
    success_column(cfg.rewards)
    for i, r in enumerate(cfg.rewards):
        REWARDS.check_params(r.name, r.params, f"rewards.{i}.params", skip=REWARD_ARGS)
        if r.on_error not in ON_ERROR:
            raise ValueError(f"rewards.{i}.on_error: '{r.on_error}' is not one of {', '.join(ON_ERROR)}")
    if t.save_merged_model and not cfg.model.lora.enabled:
        raise ValueError("trainer.save_merged_model merges a LoRA adapter: set model.lora.enabled: true (a full "
                         "fine-tune's model/ is already the whole model)")
    if t.save_merged_model and t.sharding == "fsdp2":
        raise ValueError("trainer.save_merged_model is not available with trainer.sharding: fsdp2; merge a "
                         "checkpoint's model/ (the adapter, which names its base) offline with peft's merge_and_unload")
    if t.max_nonfinite_steps < 1:
        raise ValueError(f"trainer.max_nonfinite_steps={t.max_nonfinite_steps} must be >= 1")
    if not cfg.rewards:
        raise ValueError("rewards: at least one reward function is needed")
    check_methods(cfg)


def check_answers(cfg, examples: list[dict]) -> None:
    """Every row holds the field that the rewards grading against a reference answer read (those with an
    `answer_key` parameter): a row without it would score 0 on every sample, silently."""
    for r in cfg.rewards:
        if "answer_key" not in inspect.signature(REWARDS.get(r.name)).parameters:
            continue
        key = r.params.get("answer_key", "answer")
        field = cfg.data.answer_field if key == "answer" else key
        for i, ex in enumerate(examples):
            if (ex.get("_no_answer") if key == "answer" else field not in ex):
                raise ValueError(f"{row_label(ex, i)}: no field '{field}' ({'data.answer_field' if key == 'answer' else 'the answer_key'}), "
                                 f"which reward '{r.name}' grades against; add it to every row, or set "
                                 f"data.answer_field to the row's answer field")


def validate_kl_and_aggregation(a) -> None:
    """The KL term's placement, and the aggregation a sequence-level loss takes (warnings name the key)."""
    if a.kl_penalty not in ("loss", "reward"):
        raise ValueError(f"algorithm.kl_penalty: '{a.kl_penalty}' is not 'loss' (a per-token term, DeepSeekMath) "
                         "or 'reward' (r - beta KL, verl's use_kl_in_reward)")
    if a.kl_clamp is not None and a.kl_clamp <= 0:
        raise ValueError(f"algorithm.kl_clamp={a.kl_clamp} must be > 0 (verl: 10), or null for no clamp")
    if a.beta > 0 and a.kl_penalty == "loss" and a.kl_estimator == "k1":
        log.warning("algorithm.kl_estimator: k1 as a loss term has zero expected gradient (its gradient is the "
                    "score function, whose mean is 0): use k3 or k2, or algorithm.kl_penalty: reward")
    if losses.LOSSES.flag(a.loss, "sequence_level") and a.aggregation != "seq-mean-token-mean":
        log.warning("algorithm.aggregation: %s would weight loss '%s' (a per-sequence objective) by completion "
                    "length; using seq-mean-token-mean, as verl does", a.aggregation, a.loss)
        a.aggregation = "seq-mean-token-mean"


def build_scheduler(optimizer, optim_cfg, total_steps: int):
    def factor(step: int) -> float:
        if step < optim_cfg.warmup_steps:
            return (step + 1) / optim_cfg.warmup_steps
        progress = (step - optim_cfg.warmup_steps) / max(1, total_steps - optim_cfg.warmup_steps)
        if optim_cfg.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        if optim_cfg.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    if optim_cfg.scheduler not in ("constant", "linear", "cosine"):
        raise ValueError(f"optim.scheduler: '{optim_cfg.scheduler}' is not one of constant, linear, cosine")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---------------------------------------------------------------- state
class AlgorithmState:
    """Every stateful piece of the algorithm in one checkpointed object: the prompt sampler, the
    advantage estimator's state (`advantages.make_state`: running moments, per-prompt trackers) and the
    state of the run's stateful methods (`mmrl.core.methods`), each under its name. Every rank holds
    an identical copy: all updates are computed from data gathered from all ranks, in the same order."""

    def __init__(self, cfg, num_prompts: int):
        self.advantage = advantage_estimators.make_state(cfg.algorithm.advantage)
        self.sampler = samplers.build(cfg.sampler.name, num_prompts, cfg.trainer.seed, cfg.sampler.params,
                                      tracker=self.advantage)
        self.methods: list = []  # set once the run's methods are built (they may read the sampler)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(),
                "advantage": None if self.advantage is None else self.advantage.state_dict(),
                **{m.name: m.state_dict() for m in self.methods if m.stateful}}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        if self.advantage is not None:
            self.advantage.load_state_dict(state["advantage"])
        for m in self.methods:
            if m.stateful and state.get(m.name) is not None:
                m.load_state_dict(state[m.name])


@dataclass
class GlobalRows:
    """Per-row data of the whole step, gathered from all ranks (identical on every rank)."""
    rewards: torch.Tensor        # [N, K]
    group_ids: torch.Tensor      # [N], unique across ranks, contiguous per group
    example_index: torch.Tensor  # [N]
    lengths: torch.Tensor        # [N]
    offset: int                  # this rank's first row
    completions: list | None = None  # [N] completion token id lists (only for samplers that need them)
    dropped: torch.Tensor | None = None  # [N] bool: rows of groups a reward failed on (on_error: drop)
    reward_weights: list[float] = field(default_factory=list)  # of the reward columns (the batch's)

    def total_reward(self) -> torch.Tensor:
        """[N] the combined reward (as RolloutBatch.total_reward)."""
        return combine_rewards(self.rewards, self.reward_weights or None)

    def groups(self) -> tuple[list[int], list[torch.Tensor]]:
        """(example index, row indices) of each group in order."""
        _, counts = torch.unique_consecutive(self.group_ids, return_counts=True)
        rows = torch.arange(len(self.group_ids)).split(counts.tolist())
        return [int(self.example_index[r[0]]) for r in rows], list(rows)

    def select(self, rows: torch.Tensor) -> "GlobalRows":
        """The rows `rows` (an index tensor of whole groups)."""
        return GlobalRows(rewards=self.rewards[rows], group_ids=self.group_ids[rows],
                          example_index=self.example_index[rows], lengths=self.lengths[rows], offset=0,
                          completions=[self.completions[j] for j in rows.tolist()] if self.completions else None,
                          dropped=self.dropped[rows] if self.dropped is not None else None,
                          reward_weights=self.reward_weights)


def gather_rows(accelerator, batch: RolloutBatch, with_completions: bool = False) -> GlobalRows:
    tokens = batch.completion_token_lists() if with_completions else None
    piece = (batch.rewards.cpu(), batch.group_ids.cpu(), batch.example_index.cpu(), batch.completion_lengths.cpu(),
             tokens, dropped_rows(batch).cpu())
    pieces = gather_object([piece]) if accelerator.num_processes > 1 else [piece]
    group_ids, shift, offset = [], 0, 0
    for rank, (_, g, _, _, _, _) in enumerate(pieces):
        _, inverse = torch.unique_consecutive(g, return_inverse=True)
        group_ids.append(inverse + shift)
        shift += int(inverse.max()) + 1
        offset += len(g) if rank < accelerator.process_index else 0
    return GlobalRows(rewards=torch.cat([p[0] for p in pieces]), group_ids=torch.cat(group_ids),
                      example_index=torch.cat([p[2] for p in pieces]), lengths=torch.cat([p[3] for p in pieces]),
                      offset=offset, completions=[t for p in pieces for t in p[4]] if with_completions else None,
                      dropped=torch.cat([p[5] for p in pieces]), reward_weights=list(batch.reward_weights))


# ---------------------------------------------------------------- one step's pieces
def informative_rows(batch: RolloutBatch) -> torch.Tensor:
    """[N] bool: rows of groups whose total rewards are not all equal."""
    _, _, _, spread = group_stats(batch.total_reward(), batch.group_ids)
    return spread > 0


def rollout(cfg, accelerator, adapter, model, examples: list[dict], state: AlgorithmState):
    """Draw the step's prompts, generate their groups and score them; returns (this rank's batch,
    counters). A refilling sampler (dynamic_filter) drops degenerate groups and draws again until
    every rank has its share of informative groups, or `max_rounds` is reached."""
    t, sampler = cfg.trainer, state.sampler
    rank, world = accelerator.process_index, accelerator.num_processes
    per_rank = t.prompts_per_step // world
    kept, have, errors, rounds = [], 0, {}, 0
    while True:
        rounds += 1
        indices = sampler.sample(t.prompts_per_step)
        sizes = sampler.group_sizes(indices, cfg.rollout.group_size)
        mine, my_sizes = indices[rank * per_rank:(rank + 1) * per_rank], sizes[rank * per_rank:(rank + 1) * per_rank]
        with unwrapped_for_generation(accelerator, model) as policy:
            batch = adapter.generate(policy, [examples[i] for i in mine], my_sizes, cfg.rollout)
        batch.example_index = torch.tensor(mine).repeat_interleave(torch.tensor(my_sizes))
        batch = batch.to(accelerator.device)
        add_counts(errors, score_batch(cfg.rewards, batch))
        if not sampler.refill:
            return batch, errors
        useful = informative_rows(batch) & ~dropped_rows(batch)
        kept.append(batch.select(torch.nonzero(useful).flatten()))
        have += len(torch.unique(batch.group_ids[useful]))
        short = accelerator.reduce(torch.tensor(float(max(per_rank - have, 0)), device=accelerator.device), "max")
        if short.item() == 0 or rounds >= sampler.max_rounds:
            break
    shortfall = max(per_rank - have, 0)
    if shortfall:  # top up with the last round's degenerate groups (zero advantage)
        kept.append(batch.select(torch.nonzero(~useful).flatten()))
    merged = RolloutBatch.concat([k for k in kept if len(k)])
    first_rows = group_starts(merged.group_ids)
    end = first_rows[per_rank].item() if len(first_rows) > per_rank else len(merged)
    return merged.select(slice(0, end)), {**errors, "filter/rounds": rounds, "filter/shortfall_groups": shortfall}


def add_counts(total: dict, more: dict) -> dict:
    """`total` += `more`, key by key (counters such as reward/<name>/errors)."""
    for key, value in more.items():
        total[key] = total.get(key, 0) + value
    return total


def compute_advantages(cfg, rows: GlobalRows, state: AlgorithmState, context: dict | None = None) -> torch.Tensor:
    """Advantages [N] of the whole step's rows (every rank computes the same) and the sampler update.
    `context`: extra estimator arguments from the run's methods. Groups a reward failed on
    (`rows.dropped`) are left out of both and get advantage 0."""
    if rows.dropped is not None and rows.dropped.any():
        kept = torch.nonzero(~rows.dropped).flatten()
        adv = torch.zeros(len(rows.group_ids))
        if len(kept):
            adv[kept] = compute_advantages(cfg, rows.select(kept), state, context).to(adv)
        return adv
    a = cfg.algorithm
    adv = advantage_estimators.compute(a.advantage, rows.rewards, rows.group_ids,
                                       reward_weights=rows.reward_weights or None, state=state.advantage,
                                       example_index=rows.example_index, success_column=success_column(cfg.rewards),
                                       **(context or {}), **a.advantage_params)
    indices, groups = rows.groups()
    success = rows.rewards[:, success_column(cfg.rewards)].clamp(0, 1)
    extra = {"completions": [[rows.completions[j] for j in r.tolist()] for r in groups]} \
        if state.sampler.needs_completions else {}
    state.sampler.update(indices, [success[r].tolist() for r in groups], **extra)
    return adv


@torch.no_grad()
def record_behaviour_logps(cfg, accelerator, adapter, model, ref_model, batch: RolloutBatch,
                           weighting=None) -> torch.Tensor | None:
    """old_logp (when several updates reuse the batch) and ref_logp (only when beta > 0), on the
    micro-batches of the update (`update_chunks`). With `fresh_masks` both are recorded for each inner
    iteration's masks, [N, mu, C] in old_logp_by_iteration / ref_logp_by_iteration.
    Returns the behaviour policy's log-probs [N, C] (iteration 0's masks) when the KL is a reward
    penalty (`kl_penalty: reward`), else None."""
    a = cfg.algorithm
    chunks = update_chunks(cfg, batch, weighting)
    fresh = adapter_option(adapter, "fresh_masks")
    mu = a.num_iterations
    kl_in_reward = a.kl_penalty == "reward" and a.beta > 0
    old, ref = [], []
    for k in range(mu if fresh else 1):
        at = iteration_kwargs(adapter, k)  # adapters with fresh masks draw iteration k's
        if mu > 1 or (kl_in_reward and k == 0):
            old.append(torch.cat([adapter.log_probs(model, mb, **at) for mb in chunks]))
        if a.beta > 0:
            with reference_policy(accelerator, model, ref_model) as policy:
                ref.append(torch.cat([adapter.log_probs(policy, mb, **at) for mb in chunks]))
    if fresh:
        if mu > 1:
            batch.old_logp_by_iteration = torch.stack(old, dim=1)
        if ref:
            batch.ref_logp_by_iteration = torch.stack(ref, dim=1)
    else:
        batch.old_logp = old[0] if mu > 1 else None
        batch.ref_logp = ref[0] if ref else None
    return old[0] if kl_in_reward else None


def add_kl_reward_penalty(cfg, batch: RolloutBatch, behaviour_logp: torch.Tensor) -> None:
    """KL in the reward (verl's use_kl_in_reward, TRL's RLOO): a reward column `kl_penalty` =
    -sum_t KL_t(pi_behaviour || pi_ref) over the tokens the loss counts, with weight beta
    (`batch.reward_weights`), so the advantage estimator sees r - beta KL. KL_t is `kl_estimator` (k1 =
    log pi - log pi_ref, verl's default here) clamped by `kl_clamp`."""
    a = cfg.algorithm
    ref = batch.ref_logp if batch.ref_logp is not None else batch.ref_logp_by_iteration[:, 0]
    kl = losses.KL_ESTIMATORS.get(a.kl_estimator)(behaviour_logp, ref)
    if a.kl_clamp is not None:
        kl = kl.clamp(-a.kl_clamp, a.kl_clamp)
    penalty = (kl * loss_mask(batch).to(kl.dtype)).sum(-1)
    weights = batch.reward_weights or [1.0] * batch.rewards.shape[1]
    batch.rewards = torch.cat([batch.rewards, -penalty[:, None].to(batch.rewards)], dim=1)
    batch.reward_names, batch.reward_weights = [*batch.reward_names, "kl_penalty"], [*weights, float(a.beta)]


def update_chunks(cfg, batch: RolloutBatch, weighting=None) -> list[RolloutBatch]:
    """The micro-batches of a policy update, and of the old / reference log-probs recorded for it: the
    same split, so the old log-probs come from the very forward the first inner update repeats (its
    ratio is exactly 1). Whole groups where the loss or the weighting compares a group's completions."""
    whole_groups = losses.LOSSES.flag(cfg.algorithm.loss, "whole_groups") or \
        (weighting is not None and weighting.whole_groups)
    return batch.micro_batches(cfg.trainer.gradient_accumulation_steps, whole_groups=whole_groups)


def policy_update(cfg, accelerator, adapter, model, optimizer, scheduler, batch: RolloutBatch, weighting=None,
                  methods=None) -> dict:
    """`num_iterations` optimizer steps over the batch, each accumulating over micro-batches.

    Aggregation denominators are those of the whole optimizer batch on all ranks (divided by the
    number of ranks, since DDP averages gradients), so the update does not depend on how the batch
    is split into micro-batches or processes. The run's `methods` may add loss terms (their hooks
    `before_iteration`, `loss_terms`; None: those the config turns on). Groups a reward failed on (on_error: drop) count nowhere: their tokens
    leave the loss mask. An inner update whose loss or gradient norm is not finite (on any rank) is
    skipped and counted (`nonfinite/skipped_updates`). `batch` must already be on the accelerator's device."""
    a = cfg.algorithm
    world = accelerator.num_processes
    if methods is None:
        methods = build_methods(Loop(cfg, accelerator, adapter, model))
    dropped = dropped_rows(batch)
    if dropped.any():
        batch.loss_mask = loss_mask(batch) * (~dropped)[:, None].to(batch.completion_mask)
    kept_starts = group_starts(batch.group_ids)
    num_groups_local = float((~dropped[kept_starts]).sum()) if len(kept_starts) else 0.0
    totals = accelerator.reduce(torch.tensor([float((~dropped).sum()), float(loss_mask(batch).sum()), num_groups_local],
                                             device=accelerator.device), "sum")
    num_seqs, num_tokens, num_groups = (totals / world).clamp(min=1e-8).tolist()
    skipped = 0
    with_logits = weighting is not None and weighting.needs_logits  # weights computed in the loss's own forward
    chunks = update_chunks(cfg, batch, weighting)
    beta = a.beta if a.kl_penalty == "loss" else 0.0
    stats_sum: dict[str, float] = {}
    for iteration in range(a.num_iterations):
        loss_total = 0.0
        for mb in chunks:
            if mb.old_logp_by_iteration is not None:
                mb.old_logp = mb.old_logp_by_iteration[:, iteration]
            if mb.ref_logp_by_iteration is not None:
                mb.ref_logp = mb.ref_logp_by_iteration[:, iteration]
        for method in methods:
            method.before_iteration(chunks, iteration)
        for k, mb in enumerate(chunks):
            sync = contextlib.nullcontext() if k == len(chunks) - 1 else accelerator.no_sync(model)
            with sync:
                if with_logits:
                    logits = adapter.completion_logits(model, mb)
                    logp, entropy = selective_log_softmax(logits, mb.completion_ids, with_entropy=True,
                                                          chunk_rows=adapter_option(adapter, "logprob_chunk_rows"))
                    context = {"logits": logits, "group_ids": mb.group_ids}
                else:
                    logp, entropy = adapter.log_probs(model, mb, with_entropy=True,
                                                      **iteration_kwargs(adapter, iteration))
                    context = {}
                mask = loss_mask(mb)
                old = mb.old_logp if mb.old_logp is not None else logp.detach()
                adv, weights, extra = mb.advantages, mb.token_weights, {}
                if weighting is not None:
                    adv, weights, extra = weighting.apply(adv, entropy.detach(), mask.to(entropy.dtype), weights,
                                                          **context)
                loss, stats = losses.compute(
                    a.loss, logp, old, adv, mask, ref_logp=mb.ref_logp,
                    aggregation=a.aggregation, beta=beta, kl_estimator=a.kl_estimator, kl_clamp=a.kl_clamp,
                    token_weights=weights, weights_scale_kl=weighting is not None and weighting.scales_kl,
                    max_len=cfg.rollout.max_new_tokens, num_seqs=num_seqs, num_tokens=num_tokens,
                    group_ids=mb.group_ids, num_groups=num_groups, ratio_mask=mb.ratio_mask,
                    **{k: v for method in methods for k, v in method.loss_terms(mb, iteration).items()}, **a.loss_params)
                accelerator.backward(loss)
            loss_total += loss.item()
            for key in (k for k in stats if k.startswith("loss/")):  # clip / ratio statistics: every inner update
                stats_sum[key] = stats_sum.get(key, 0.0) + float(stats[key]) / (len(chunks) * a.num_iterations)
            if iteration == 0:  # the policy statistics of the on-policy pass
                stats.update(extra)
                stats["policy/entropy"] = losses.masked_mean(entropy, mask.to(entropy.dtype))
                for key, value in stats.items():
                    if not key.startswith("loss/"):
                        stats_sum[key] = stats_sum.get(key, 0.0) + float(value) / len(chunks)
            else:  # terms that act only after the first update: summed over micro-batches, averaged over updates
                for key in (k for method in methods for k in method.later_iteration_stats if k in stats):
                    stats_sum[key] = stats_sum.get(key, 0.0) + float(stats[key]) / (a.num_iterations - 1)
        grad_norm = sharding.clip_gradients(accelerator, model, cfg.optim.max_grad_norm)
        bad = accelerator.reduce(torch.tensor(float(not math.isfinite(loss_total)), device=accelerator.device), "sum")
        if bad.item() > 0 or not math.isfinite(grad_norm):  # every rank sees the same sum and global norm
            skipped += 1
            with warnings.catch_warnings():  # torch warns of a scheduler step without an optimizer step
                warnings.simplefilter("ignore", UserWarning)
                scheduler.step()  # the schedule follows the steps taken or skipped
        else:
            optimizer.step()
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return {**stats_sum, "loss/total": loss_total, "optim/grad_norm": grad_norm, "nonfinite/skipped_updates": skipped}


COUNTED = ("filter/shortfall_groups",)  # besides every `/errors` key and the run's methods' `counted`


def step_metrics(accelerator, rows: GlobalRows, advantages: torch.Tensor, reward_names: list[str], local: dict,
                 counted_keys: tuple[str, ...] = ()) -> dict:
    """Step metrics over all ranks: reward/length/advantage statistics from the gathered rows;
    counters (COUNTED, `counted_keys`, `/errors`) summed and per-rank statistics averaged over ranks."""
    total = rows.total_reward()
    _, _, _, spread = group_stats(total, rows.group_ids)
    first = group_starts(rows.group_ids)
    device = accelerator.device
    counted = sorted(k for k in local if k in COUNTED or k in counted_keys or k.endswith("/errors"))
    sums = accelerator.reduce(torch.tensor([float(local[k]) for k in counted], device=device), "sum").tolist()
    averaged_keys = sorted(k for k in local if k not in counted)
    per_rank = torch.tensor([float(local[k]) for k in averaged_keys], device=device)
    averaged = dict(zip(averaged_keys, accelerator.reduce(per_rank, "mean").tolist()))
    scored = ~rows.dropped if rows.dropped is not None and not rows.dropped.all() else torch.ones_like(total, dtype=torch.bool)
    out = {"reward/mean": total[scored].mean(), "reward/std": total[scored].std() if int(scored.sum()) > 1 else 0.0}
    for j, name in enumerate(reward_names):  # the rewards of the groups that train (not those a reward failed on)
        out[f"reward/{name}/mean"] = rows.rewards[scored, j].mean()
    out.update({
        "advantage/abs_mean": advantages.abs().mean(),
        "reward/frac_degenerate_groups": float((spread[first] == 0).float().mean()),
        "group_size/mean": len(rows.group_ids) / float(len(first)),
        "group_size/max": float(torch.unique_consecutive(rows.group_ids, return_counts=True)[1].max()),
        "completion_length/mean": rows.lengths.float().mean(),
        "completion_length/max": rows.lengths.max(),
    })
    out.update(dict(zip(counted, sums)))
    out["reward/errors"] = sum(v for k, v in zip(counted, sums) if k.startswith("reward/") and k.endswith("/errors"))
    if rows.dropped is not None:
        out["reward/dropped_groups"] = float(rows.dropped[first].sum())
    out.update(averaged)
    return out


# ---------------------------------------------------------------- the loop
def train(cfg, adapter, model, examples: list[dict], accelerator: Accelerator | None = None,
          data_stats: dict | None = None) -> MetricsLog:
    """Train `model` with group-relative RL as configured; returns the metrics log. `data_stats`
    (e.g. {"data/skipped": rows dropped at load}) is logged with every step. Methods with state or a
    rollout rewrite run through their hooks (`mmrl.core.methods`), chosen by the config."""
    assert_adapter(adapter)
    claim_output_dir(cfg)  # the scripts claim it before building the model; again for direct callers
    accelerator = accelerator or make_accelerator(cfg)
    validate(cfg, accelerator.num_processes)
    check_answers(cfg, examples)
    if adapter_option(adapter, "check_rollout") is not None:  # e.g. masked diffusion: block length / steps
        adapter.check_rollout(cfg.rollout)
    set_seed(cfg.trainer.seed)
    world = accelerator.num_processes
    resume = checkpoint.resolve_resume(cfg.resume_from, cfg.output_dir)
    if resume is not None:
        checkpoint.check_resumed_config(resume, asdict(cfg), family_shape_keys(cfg.model.modality))
    accelerator.print(f"mmrl: world_size={world} device={accelerator.device} "
                      f"distributed={accelerator.distributed_type.value} sharding={cfg.trainer.sharding} resume={resume}")

    # SETUP: sharding, optimizer, warm-up, reference policy, prompt sampler, then the checkpoint (if resuming)
    sharded = cfg.trainer.sharding == "fsdp2"
    sharding.check(cfg, accelerator.device.type)
    with_reference = cfg.algorithm.beta > 0 and not cfg.model.lora.enabled
    ref_model = None
    if sharded:  # the reference is copied before sharding and sharded the same way (no full copy per rank)
        ref_model = copy.deepcopy(model).eval().requires_grad_(False) if with_reference else None
        model = sharding.place(model, cfg, accelerator)
        ref_model = sharding.place(ref_model, cfg, accelerator) if ref_model is not None else None
    # a model with parts that train at their own rate gives its parameter groups (model.optimizer_groups)
    params = model.optimizer_groups(cfg.optim.lr) if hasattr(model, "optimizer_groups") else \
        [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                  betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2))
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.trainer.max_steps * cfg.algorithm.num_iterations)
    if not sharded:
        model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.sft.steps > 0:  # re-run on resume too: the reference policy is the post-warm-up model
        supervised_warmup(cfg, accelerator, adapter, model, examples)
    if with_reference and ref_model is None:
        ref_model = copy.deepcopy(accelerator.unwrap_model(model)).eval().requires_grad_(False)
    elif with_reference and cfg.sft.steps > 0:
        sharding.copy_parameters(model, ref_model)
    # training mode: from_pretrained returns a model in eval mode, where gradient checkpointing (and any
    # dropout) would do nothing; the adapters switch to eval mode for generation and back
    model.train()
    state = AlgorithmState(cfg, len(examples))
    state.methods = methods = build_methods(Loop(cfg, accelerator, adapter, model, examples, state))
    counted_keys = tuple(k for m in methods for k in m.counted)
    weighting = token_weighting.make(cfg.algorithm.token_weighting, cfg.algorithm.token_weighting_params)
    for obj in (scheduler, state):  # restored by load_state in this order
        accelerator.register_for_checkpointing(obj)
    start = checkpoint.load(accelerator, resume, model, optimizer, cfg.trainer.sharding)["step"] \
        if resume is not None else 0
    metrics_log = MetricsLog(cfg.output_dir, enabled=accelerator.is_main_process,
                             resume_step=start if resume is not None else None,
                             append=cfg.resume_from is not None and resume is None)
    if cfg.eval.every > 0:  # load (and check) the benchmarks before the first step, not at the first eval
        benchmarks = load_benchmarks(cfg.eval, cfg.eval.system_prompt or cfg.data.system_prompt,
                                     image_examples=adapter_option(adapter, "image_examples"))
        eval_root = eval_cache_root(cfg, resume is None, accelerator)

    start_trackers(cfg, accelerator)
    counter = FlopCounter()  # throughput and MFU (mmrl.core.throughput)
    for counted in (model, ref_model):
        if counted is not None:
            counter.attach(counted)
    compute_dtype = torch.bfloat16 if cfg.trainer.mixed_precision == "bf16" else \
        torch.float16 if cfg.trainer.mixed_precision == "fp16" else next(model.parameters()).dtype
    peak = peak_tflops(cfg.trainer.peak_tflops, accelerator.device, compute_dtype)
    progress = tqdm(range(start, cfg.trainer.max_steps), initial=start, total=cfg.trainer.max_steps,
                    desc=method_label(cfg), disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    nonfinite_run = 0  # consecutive steps whose every update was skipped for a non-finite loss or gradient
    for step in progress:
        t0 = time.perf_counter()
        counter.reset()
        with counter.phase("rollout", accelerator.device):
            before = {k: v for method in methods for k, v in method.before_rollout(step).items()}
            # ROLLOUT: every rank draws the same global prompts, generates its share of groups, scores them
            batch, local = rollout(cfg, accelerator, adapter, model, examples, state)
            for method in methods:  # rewrites of each rank's scored groups
                batch, extra = method.after_rollout(batch, step)
                add_counts(local, {k: extra.pop(k) for k in list(extra) if k.endswith("/errors")})
                local.update(extra)
        # OLD / REFERENCE LOG-PROBS (and, with kl_penalty: reward, the KL as a reward column)
        with counter.phase("logprobs", accelerator.device):
            behaviour = record_behaviour_logps(cfg, accelerator, adapter, model, ref_model, batch, weighting)
        if behaviour is not None:
            add_kl_reward_penalty(cfg, batch, behaviour)
        # ADVANTAGE: over the rows of all ranks (batch-level statistics, stateful estimators)
        with counter.phase("advantage", accelerator.device):
            rows = gather_rows(accelerator, batch, with_completions=state.sampler.needs_completions)
            context = {k: v for method in methods for k, v in method.advantage_context(batch).items()}
            advantages = compute_advantages(cfg, rows, state, context)
        local.update(state.sampler.metrics())
        local.update(before)
        batch.advantages = advantages[rows.offset:rows.offset + len(batch)].to(accelerator.device)
        # UPDATE: mu optimizer steps on this batch
        with counter.phase("update", accelerator.device):
            if weighting is not None:
                weighting.prepare(batch, completion_logits=lambda rows: adapter.completion_logits(model, rows))
            local.update(policy_update(cfg, accelerator, adapter, model, optimizer, scheduler, batch, weighting, methods))
            for method in methods:
                local.update(method.after_update(batch))
        # LOG + SAVE
        step_time = time.perf_counter() - t0
        metrics = step_metrics(accelerator, rows, advantages, batch.reward_names, local, counted_keys)
        metrics.update({"optim/lr": scheduler.get_last_lr()[0], "time/step_s": step_time, "run/world_size": world},
                       **(data_stats or {}))
        trained = int(batch.prompt_mask.sum() + batch.completion_mask.sum()) * cfg.algorithm.num_iterations
        metrics.update(step_throughput(accelerator, counter, step_time, int(batch.completion_mask.sum()), trained,
                                       peak))
        last = step + 1 == cfg.trainer.max_steps
        if cfg.eval.every > 0 and ((step + 1) % cfg.eval.every == 0 or last):
            with unwrapped_for_generation(accelerator, model) as policy:
                metrics.update(evaluate_policy(cfg, accelerator, adapter, policy, benchmarks, eval_root, step + 1))
        record = metrics_log.log(step + 1, metrics)
        accelerator.log({k: v for k, v in record.items() if v is not None and k != "step"}, step=step + 1)
        progress.set_postfix(progress_fields(record, batch.reward_names), refresh=False)
        if accelerator.is_main_process and (step + 1) % cfg.trainer.log_every == 0:
            progress.write(format_metrics(record))
        if last or (cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0):
            checkpoint.save(accelerator, cfg.output_dir, step + 1, model, adapter, asdict(cfg), optimizer=optimizer,
                            sharding=cfg.trainer.sharding, save_hf_model=cfg.trainer.save_hf_model,
                            keep=cfg.trainer.save_total_limit, merge_lora=cfg.trainer.save_merged_model)
            if accelerator.is_main_process:  # the curve so far, also for a run that later crashes
                metrics_log.plot_rewards(reward_names=batch.reward_names, weights=batch.reward_weights,
                                         title=method_label(cfg))
        nonfinite_run = nonfinite_run + 1 if record["nonfinite/skipped_updates"] == cfg.algorithm.num_iterations else 0
        if nonfinite_run >= cfg.trainer.max_nonfinite_steps:  # validated >= 1
            raise FloatingPointError(
                f"{nonfinite_run} steps in a row had a non-finite loss or gradient norm (all their updates skipped; "
                f"trainer.max_nonfinite_steps={cfg.trainer.max_nonfinite_steps}). Lower optim.lr, check the rewards "
                f"and the model dtype (model.dtype, trainer.mixed_precision); resume_from=latest continues from "
                f"the last checkpoint")
    progress.close()
    counter.detach()
    if accelerator.is_main_process:
        accelerator.print(metrics_log.summary())
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.wait_for_everyone()
    return metrics_log


def method_label(cfg) -> str:
    """The method's name for the progress bar and plots: the loss, then what differs from plain GRPO."""
    a = cfg.algorithm
    parts = [a.loss, a.advantage, a.token_weighting, cfg.sampler.name if cfg.sampler.name != "uniform" else None,
             *(method.label(cfg) for method in METHODS.values()), f"kl{a.beta:g}" if a.beta > 0 else None]
    return "+".join(dict.fromkeys(p for p in parts if p))


def progress_fields(record: dict, reward_names: list[str]) -> dict:
    """The progress bar's metrics that move: the total reward, each reward's mean, KL, entropy, and
    skipped updates when there are any (the loss of an on-policy step is ~0 by construction)."""
    def short(value) -> str:
        return "nan" if value is None else f"{value:.3g}"
    fields = {"reward": short(record.get("reward/mean"))}
    for name in reward_names:
        fields[name] = short(record.get(f"reward/{name}/mean"))
    for field_name, key in (("kl", "kl/mean"), ("entropy", "policy/entropy")):
        if key in record:
            fields[field_name] = short(record[key])
    if record.get("nonfinite/skipped_updates"):
        fields["skipped"] = record["nonfinite/skipped_updates"]
    return fields


def start_trackers(cfg, accelerator) -> None:
    """Start the experiment trackers of `trainer.log_with` (accelerate's: TensorBoard under
    <output_dir>/trackers, W&B, Trackio, ...) with the run's config, flattened to dotted keys."""
    if not cfg.trainer.log_with or accelerator.trackers:
        return
    flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in checkpoint.flatten(asdict(cfg)).items()}
    name = cfg.trainer.run_name or Path(cfg.output_dir).resolve().name
    where = Path(cfg.output_dir) / "trackers"  # W&B's run files (offline runs too) beside TensorBoard's
    where.mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers(name, config=flat, init_kwargs={"wandb": {"dir": str(where), "name": name}})


def format_metrics(record: dict) -> str:
    keys = ["reward/mean", "reward/frac_degenerate_groups", "loss/total", "kl/mean", "policy/entropy", "loss/clip_frac",
            "completion_length/mean", "optim/grad_norm", "time/step_s"]
    parts = [f"{k}={record[k]:.4g}" for k in keys if isinstance(record.get(k), (int, float))]
    return f"step {record['step']}: " + " ".join(parts)
