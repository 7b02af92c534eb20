"""Atomic checkpoints: model, optimizer, scheduler, RNG of every rank, sampler/estimator state.

A checkpoint is written to `step_XXXXXX.tmp` and renamed when complete, so a crash mid-save
never leaves a half checkpoint that `resume_from=latest` would pick up. Under DDP accelerate writes
the model and optimizer whole; under FSDP2 (`trainer.sharding: fsdp2`) every rank writes its shards
with torch.distributed.checkpoint into `sharded/` (`.distcp` files), which load into any number of
processes. Both also write `model/`, the gathered weights that `from_pretrained` loads.
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
        return found[-1] if found else None
    path = Path(resume_from)
    if not (path / "run_state.yaml").exists():
        raise ValueError(f"resume_from: '{resume_from}' is not an mmrl checkpoint (no run_state.yaml); "
                         f"use a directory under <output_dir>/checkpoints or 'latest'")
    return path


SHARDED = "sharded"


def save(accelerator, output_dir, step: int, model, adapter, config_dict: dict, optimizer=None,
         sharding: str = "none", save_hf_model: bool = True, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically; every rank must call it."""
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
    if accelerator.is_main_process:
        (tmp / "run_state.yaml").write_text(yaml.safe_dump({"step": step, "sharding": sharding,
                                                            "world_size": accelerator.num_processes}))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config_dict, sort_keys=False))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def full_state_dict(model) -> dict:
    """The whole state dict of a sharded model on rank 0 (on the CPU; empty on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


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
