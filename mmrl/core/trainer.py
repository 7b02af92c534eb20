"""The group-relative training loop on HuggingFace accelerate (DDP / DeepSpeed through accelerate configs).

One step:  sample prompts -> G completions each (adapter.generate) -> rewards (configured functions)
-> advantages (estimator by name, within groups on each rank) -> old / reference log-probs
-> `num_iterations` policy updates over the batch (loss by name, gradient accumulation over
micro-batches) -> metrics, checkpoint.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import asdict

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

from mmrl.core import advantages as advantage_estimators
from mmrl.core import checkpoint, losses
from mmrl.core.adapter import assert_adapter
from mmrl.core.advantages import combine_rewards, group_stats
from mmrl.core.batch import RolloutBatch
from mmrl.core.metrics import MetricsLog
from mmrl.core.samplers import UniformSampler
from mmrl.core.sft import supervised_warmup
from mmrl.rewards import REWARDS, score


# ---------------------------------------------------------------- setup helpers
def make_accelerator(cfg) -> Accelerator:
    accelerator = Accelerator(mixed_precision=cfg.trainer.mixed_precision)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise RuntimeError(
            f"the launcher started WORLD_SIZE={launched} processes but each sees world_size="
            f"{accelerator.num_processes}: they would train unsynchronised copies. On CPU launch with "
            "`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ...`")
    if accelerator.distributed_type == DistributedType.FSDP:
        raise NotImplementedError("FSDP rollouts are not supported yet: use DDP or a DeepSpeed (ZeRO 1-3) "
                                  "accelerate config")
    return accelerator


def validate(cfg, world_size: int) -> None:
    """Config errors that need more than one field, named with the fix."""
    t, a = cfg.trainer, cfg.algorithm
    if t.prompts_per_step % world_size:
        raise ValueError(f"trainer.prompts_per_step={t.prompts_per_step} must be divisible by the "
                         f"{world_size} processes")
    local_rows = t.prompts_per_step // world_size * cfg.rollout.group_size
    if local_rows % t.gradient_accumulation_steps:
        raise ValueError(f"trainer.gradient_accumulation_steps={t.gradient_accumulation_steps} must divide the "
                         f"{local_rows} completions per process (prompts_per_step / processes * group_size)")
    if a.num_iterations < 1 or a.beta < 0:
        raise ValueError("algorithm.num_iterations must be >= 1 and algorithm.beta >= 0")
    estimator = advantage_estimators.ADVANTAGES.get(a.advantage)
    if cfg.rollout.group_size < 2 and not getattr(estimator, "single_stream", False):
        raise ValueError(f"rollout.group_size={cfg.rollout.group_size}: advantage '{a.advantage}' is "
                         "group-relative and gives every completion 0 with one completion per prompt")
    advantage_estimators.ADVANTAGES.check_params(a.advantage, a.advantage_params, "algorithm.advantage_params")
    losses.LOSSES.check_params(a.loss, a.loss_params, "algorithm.loss_params")
    losses.AGGREGATIONS.get(a.aggregation)
    losses.KL_ESTIMATORS.get(a.kl_estimator)
    for i, r in enumerate(cfg.rewards):
        REWARDS.check_params(r.name, r.params, f"rewards.{i}.params")
    if not cfg.rewards:
        raise ValueError("rewards: at least one reward function is needed")


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


@contextlib.contextmanager
def unwrapped_for_generation(accelerator, model):
    """The bare model, with ZeRO-3 shards gathered for the duration of generation."""
    unwrapped = accelerator.unwrap_model(model)
    ds = getattr(accelerator.state, "deepspeed_plugin", None)
    if accelerator.distributed_type == DistributedType.DEEPSPEED and ds is not None and ds.zero_stage == 3:
        import deepspeed
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield unwrapped
    else:
        yield unwrapped


@contextlib.contextmanager
def reference_policy(accelerator, model, ref_model):
    """The frozen reference: a separate copy, or (LoRA) the same model with adapters disabled."""
    if ref_model is not None:
        yield ref_model
    else:
        with accelerator.unwrap_model(model).disable_adapter():
            yield model


# ---------------------------------------------------------------- one step's pieces
def score_and_advantage(cfg, batch: RolloutBatch) -> dict:
    """Rewards [N, K] and advantages [N] on this rank's groups; returns the metrics it can."""
    rewards, names, errors = score(cfg.rewards, batch.completions_text, batch.examples,
                                   batch.completion_lengths.tolist())
    rewards = rewards.to(batch.group_ids.device)
    batch.rewards, batch.reward_names = rewards, names
    weights = [r.weight for r in cfg.rewards]
    a = cfg.algorithm
    batch.advantages = advantage_estimators.compute(a.advantage, rewards, batch.group_ids,
                                                    reward_weights=weights, **a.advantage_params)
    total = combine_rewards(rewards, weights)
    _, _, _, spread = group_stats(total, batch.group_ids)
    first_rows = torch.ones_like(batch.group_ids, dtype=torch.bool)
    first_rows[1:] = batch.group_ids[1:] != batch.group_ids[:-1]
    return {"reward_errors": errors, "degenerate_groups": float((spread[first_rows] == 0).sum()),
            "groups": float(first_rows.sum())}


@torch.no_grad()
def record_behaviour_logps(cfg, accelerator, adapter, model, ref_model, batch: RolloutBatch) -> None:
    """old_logp (only when several updates reuse the batch) and ref_logp (only when beta > 0)."""
    chunks = batch.micro_batches(cfg.trainer.gradient_accumulation_steps)
    if cfg.algorithm.num_iterations > 1:
        batch.old_logp = torch.cat([adapter.log_probs(model, mb) for mb in chunks])
    if cfg.algorithm.beta > 0:
        with reference_policy(accelerator, model, ref_model) as ref:
            batch.ref_logp = torch.cat([adapter.log_probs(ref, mb) for mb in chunks])


def policy_update(cfg, accelerator, adapter, model, optimizer, scheduler, batch: RolloutBatch) -> dict:
    """`num_iterations` optimizer steps over the batch, each accumulating over micro-batches.

    Aggregation denominators are those of the whole optimizer batch on all ranks (divided by the
    number of ranks, since DDP averages gradients), so the update does not depend on how the batch
    is split into micro-batches or processes. `batch` must already be on the accelerator's device."""
    a, t = cfg.algorithm, cfg.trainer
    world = accelerator.num_processes
    totals = accelerator.reduce(torch.tensor([float(len(batch)), float(batch.completion_mask.sum())],
                                             device=accelerator.device), "sum")
    num_seqs, num_tokens = (totals / world).tolist()
    chunks = batch.micro_batches(t.gradient_accumulation_steps)
    stats_sum: dict[str, float] = {}
    for iteration in range(a.num_iterations):
        loss_total = 0.0
        for k, mb in enumerate(chunks):
            sync = contextlib.nullcontext() if k == len(chunks) - 1 else accelerator.no_sync(model)
            with sync:
                logp, entropy = adapter.log_probs(model, mb, with_entropy=True)
                old = mb.old_logp if mb.old_logp is not None else logp.detach()
                loss, stats = losses.compute(
                    a.loss, logp, old, mb.advantages, mb.completion_mask, ref_logp=mb.ref_logp,
                    aggregation=a.aggregation, beta=a.beta, kl_estimator=a.kl_estimator,
                    token_weights=mb.token_weights, max_len=cfg.rollout.max_new_tokens,
                    num_seqs=num_seqs, num_tokens=num_tokens, **a.loss_params)
                accelerator.backward(loss)
            loss_total += loss.item()
            if iteration == 0:
                stats["entropy"] = losses.masked_mean(entropy, mb.completion_mask.to(entropy.dtype))
                for key, value in stats.items():
                    stats_sum[key] = stats_sum.get(key, 0.0) + value.item() / len(chunks)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return {**stats_sum, "loss": loss_total, "grad_norm": float(grad_norm)}


def gather_step_metrics(accelerator, batch: RolloutBatch, weights: list[float], local: dict) -> dict:
    """Step metrics over all ranks (rewards and lengths gathered; per-rank stats averaged)."""
    device = accelerator.device
    rewards = accelerator.gather(batch.rewards.to(device))
    total = combine_rewards(rewards, weights)
    lengths = accelerator.gather(batch.completion_lengths.float().to(device))
    adv = accelerator.gather(batch.advantages.float().to(device))
    counted = ("reward_errors", "degenerate_groups", "groups")
    sums = accelerator.reduce(torch.tensor([float(local[k]) for k in counted], device=device), "sum").tolist()
    errors, degenerate, groups = sums
    out = {"reward/mean": total.mean(), "reward/std": total.std() if total.numel() > 1 else 0.0}
    for j, name in enumerate(batch.reward_names):
        out[f"reward/{name}/mean"] = rewards[:, j].mean()
    averaged_keys = sorted(k for k in local if k not in counted)
    per_rank = torch.tensor([float(local[k]) for k in averaged_keys], device=device)
    averaged = dict(zip(averaged_keys, accelerator.reduce(per_rank, "mean").tolist()))
    out.update({
        "reward/errors": errors,
        "advantage/abs_mean": adv.abs().mean(),
        "frac_degenerate_groups": degenerate / groups,
        "completion_length/mean": lengths.mean(),
        "completion_length/max": lengths.max(),
    })
    out.update(averaged)
    return out


# ---------------------------------------------------------------- the loop
def train(cfg, adapter, model, examples: list[dict], accelerator: Accelerator | None = None) -> MetricsLog:
    """Train `model` with group-relative RL as configured; returns the metrics log."""
    assert_adapter(adapter)
    accelerator = accelerator or make_accelerator(cfg)
    validate(cfg, accelerator.num_processes)
    set_seed(cfg.trainer.seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    resume = checkpoint.resolve_resume(cfg.resume_from, cfg.output_dir)
    accelerator.print(f"mmrl: world_size={world} device={accelerator.device} "
                      f"distributed={accelerator.distributed_type.value} resume={resume}")

    # SETUP: optimizer, warm-up, reference policy, prompt sampler, then the checkpoint (if resuming)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                  betas=(cfg.optim.adam_beta1, cfg.optim.adam_beta2))
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.trainer.max_steps * cfg.algorithm.num_iterations)
    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.sft.steps > 0:  # re-run on resume too: the reference policy is the post-warm-up model
        supervised_warmup(cfg, accelerator, adapter, model, examples)
    ref_model = None
    if cfg.algorithm.beta > 0 and not cfg.model.lora.enabled:
        ref_model = copy.deepcopy(accelerator.unwrap_model(model)).eval().requires_grad_(False)
    sampler = UniformSampler(len(examples), seed=cfg.trainer.seed)
    for obj in (scheduler, sampler):  # restored by load_state in this order
        accelerator.register_for_checkpointing(obj)
    start = checkpoint.load(accelerator, resume)["step"] if resume is not None else 0
    metrics_log = MetricsLog(cfg.output_dir, enabled=accelerator.is_main_process,
                             resume_step=start if resume is not None else None)
    per_rank = cfg.trainer.prompts_per_step // world
    weights = [r.weight for r in cfg.rewards]

    progress = tqdm(range(start, cfg.trainer.max_steps), initial=start, total=cfg.trainer.max_steps,
                    desc="grpo", disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    for step in progress:
        t0 = time.perf_counter()
        # ROLLOUT: every rank draws the same global prompts and keeps its share of whole groups
        indices = sampler.sample(cfg.trainer.prompts_per_step)[rank * per_rank:(rank + 1) * per_rank]
        with unwrapped_for_generation(accelerator, model) as policy:
            batch = adapter.generate(policy, [examples[i] for i in indices], cfg.rollout.group_size, cfg.rollout)
        # SCORE + ADVANTAGE: groups never cross a rank, so this is local
        batch = batch.to(accelerator.device)
        local = score_and_advantage(cfg, batch)
        record_behaviour_logps(cfg, accelerator, adapter, model, ref_model, batch)
        # UPDATE: mu optimizer steps on this batch
        local.update(policy_update(cfg, accelerator, adapter, model, optimizer, scheduler, batch))
        # LOG + SAVE
        metrics = gather_step_metrics(accelerator, batch, weights, local)
        metrics.update(lr=scheduler.get_last_lr()[0], step_time_s=time.perf_counter() - t0, world_size=world)
        record = metrics_log.log(step + 1, metrics)
        progress.set_postfix(reward=f"{record['reward/mean']:.3f}", loss=f"{record['loss']:.4f}")
        if accelerator.is_main_process and (step + 1) % cfg.trainer.log_every == 0:
            progress.write(format_metrics(record))
        last = step + 1 == cfg.trainer.max_steps
        if last or (cfg.trainer.save_every and (step + 1) % cfg.trainer.save_every == 0):
            checkpoint.save(accelerator, cfg.output_dir, step + 1, model, adapter, asdict(cfg),
                            save_hf_model=cfg.trainer.save_hf_model, keep=cfg.trainer.save_total_limit)
    progress.close()
    if accelerator.is_main_process:
        metrics_log.plot_rewards()
        accelerator.print(metrics_log.summary())
    accelerator.wait_for_everyone()
    return metrics_log


def format_metrics(record: dict) -> str:
    keys = ["reward/mean", "frac_degenerate_groups", "loss", "kl", "entropy", "clip_frac",
            "completion_length/mean", "grad_norm", "step_time_s"]
    parts = [f"{k}={record[k]:.4g}" for k in keys if isinstance(record.get(k), (int, float))]
    return f"step {record['step']}: " + " ".join(parts)
