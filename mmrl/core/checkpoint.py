"""Atomic checkpoints: model, optimizer, scheduler, RNG of every rank, sampler/estimator state.

A checkpoint is written to `step_XXXXXX.tmp` and renamed when complete, so a crash mid-save
never leaves a half checkpoint that `resume_from=latest` would pick up. Under DDP accelerate writes
the model and optimizer whole; under FSDP2 (`trainer.sharding: fsdp2`) every rank writes its shards
with torch.distributed.checkpoint into `sharded/` (`.distcp` files), which load into any number of
processes. Both also write `model/`, the gathered weights that `from_pretrained` loads (a LoRA run: the adapter,
whose config names the base model's directory; `trainer.save_merged_model` adds `merged/`, the merged
weights), and `config.yaml`, the run's config, which a resume compares with its own.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

PREFIX = "step_"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{PREFIX}{step:06d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def resolve_resume(resume_from: str | None, output_dir: str | Path) -> Path | None:
    """`resume_from`: None, a checkpoint directory, or 'latest' (None if there is none yet)."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            log.warning("resume_from=latest: %s has no checkpoint yet; starting from step 0 (metrics are appended "
                        "to the existing metrics.jsonl, if any)", Path(output_dir) / "checkpoints")
        return found[-1] if found else None
    path = Path(resume_from)
    if not (path / "run_state.yaml").exists():
        raise ValueError(f"resume_from: '{resume_from}' is not an mmrl checkpoint (no run_state.yaml); "
                         f"use a directory under <output_dir>/checkpoints or 'latest'")
    return path


SHARDED = "sharded"


def save(accelerator, output_dir, step: int, model, adapter, config_dict: dict, optimizer=None,
         sharding: str = "none", save_hf_model: bool = True, keep: int = 2, merge_lora: bool = False) -> Path:
    """Write checkpoint `step` atomically; every rank must call it. `merge_lora`: also write merged/, the
    LoRA model with its adapter merged into the base weights (not sharded runs)."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # DDP: model and optimizer; always: registered objects, per-rank RNG
    if sharding == "fsdp2":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / SHARDED))
    if save_hf_model:
        state_dict = full_state_dict(model) if sharding == "fsdp2" else accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            accelerator.unwrap_model(model).save_pretrained(tmp / "model", state_dict=state_dict)
            adapter.save_pretrained(tmp / "model")
    if merge_lora and accelerator.is_main_process:
        import copy

        merged = copy.deepcopy(accelerator.unwrap_model(model)).merge_and_unload()
        merged.save_pretrained(tmp / "merged")
        adapter.save_pretrained(tmp / "merged")
        del merged
    if accelerator.is_main_process:
        (tmp / "run_state.yaml").write_text(yaml.safe_dump({"step": step, "sharding": sharding,
                                                            "world_size": accelerator.num_processes}))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config_dict, sort_keys=False))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in rotated(output_dir, step, keep):
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def rotated(output_dir, step: int, keep: int) -> list[Path]:
    """The checkpoints to delete after writing `step`, keeping `keep` (0 = all): never the one just
    written, and never one of a later step (left by a run resumed from an earlier checkpoint), only
    the oldest of those before it."""
    if keep <= 0:
        return []
    earlier = [p for p in list_checkpoints(output_dir) if int(p.name[len(PREFIX):]) < step]
    return earlier[:max(0, len(earlier) - (keep - 1))]


def full_state_dict(model) -> dict:
    """The whole state dict of a sharded model on rank 0 (on the CPU; empty on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# keys a resumed run may change freely (how long, how often, where it logs), and those that change what
# the checkpoint's weights mean (resuming with them changed is refused)
FREE_KEYS = ("resume_from", "overwrite_output_dir", "output_dir", "trainer.max_steps", "trainer.save_every",
             "trainer.save_total_limit", "trainer.save_hf_model", "trainer.save_merged_model", "trainer.log_every",
             "trainer.log_with", "trainer.run_name", "trainer.max_nonfinite_steps", "eval.")
SHAPE_KEYS = ("model.modality", "model.tiny.", "model.lora.enabled", "model.lora.r", "model.lora.target_modules")
# (a model family adds its own: `shape_keys` of its module, mmrl.modalities)


def flatten(tree, prefix: str = "") -> dict:
    """A nested config dict as {dotted key: value} (lists of sections, like rewards, by index)."""
    out = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) and \
        any(isinstance(v, dict) for v in tree) else None
    if items is None:
        return {prefix: tree}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def check_resumed_config(path: Path, config_dict: dict, family_shape_keys: tuple[str, ...] = ()) -> list[str]:
    """Compare the config a checkpoint was written with (its config.yaml) with the resuming run's:
    refuse a change of the model's shape (SHAPE_KEYS and the model family's `family_shape_keys`); warn
    of any other change (model, algorithm, data, rewards, ...) with the keys and both values. Returns
    the changed keys."""
    saved_file = path / "config.yaml"
    if not saved_file.exists():
        return []
    saved, now = flatten(yaml.safe_load(saved_file.read_text()) or {}), flatten(config_dict)
    changed = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)
               and not any(k == f or (f.endswith(".") and k.startswith(f)) for f in FREE_KEYS)]
    shape = [k for k in changed if any(k == f or (f.endswith(".") and k.startswith(f))
                                       for f in (*SHAPE_KEYS, *family_shape_keys))]
    describe = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in (shape or changed)[:12])
    if shape:
        raise ValueError(f"resume_from: {path} holds a model of another shape than this run's ({describe}); "
                         "resume with the checkpoint's settings, or start a new run in another output_dir")
    if changed:
        log.warning("resume_from: %s was written with another config; %d key(s) differ: %s%s", path, len(changed),
                    describe, " ..." if len(changed) > 12 else "")
    return changed


def load(accelerator, path: Path, model=None, optimizer=None, sharding: str = "none") -> dict:
    """Restore what `save` wrote into the model, optimizer and registered objects; returns
    {'step': ...}. A sharded checkpoint loads into any number of processes."""
    run_state = yaml.safe_load((path / "run_state.yaml").read_text())
    saved = run_state.get("sharding", "none")
    if saved != sharding:
        raise ValueError(f"resume_from: {path} was written with trainer.sharding={saved}; resume it with "
                         f"trainer.sharding={saved} (this run has {sharding})")
    if run_state.get("world_size", accelerator.num_processes) != accelerator.num_processes:
        log.warning("resuming a %s-process checkpoint on %s processes: the model, optimizer and sampler continue, "
                    "but each rank's share of the prompts and its random stream differ from the original run's",
                     run_state["world_size"], accelerator.num_processes)
    accelerator.load_state(str(path))
    if sharding == "fsdp2":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=str(path / SHARDED))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return run_state
