"""Atomic checkpoints: model, optimizer, scheduler, RNG of every rank, sampler/estimator state.

A checkpoint is written to `step_XXXXXX.tmp` and renamed when complete, so a crash mid-save
never leaves a half checkpoint that `resume_from=latest` would pick up.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

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


def save(accelerator, output_dir, step: int, model, adapter, config_dict: dict,
         save_hf_model: bool = True, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically; every rank must call it."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model, optimizer, registered objects, per-rank RNG
    if save_hf_model:
        state_dict = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            accelerator.unwrap_model(model).save_pretrained(tmp / "model", state_dict=state_dict)
            adapter.save_pretrained(tmp / "model")
    if accelerator.is_main_process:
        (tmp / "run_state.yaml").write_text(yaml.safe_dump({"step": step}))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config_dict, sort_keys=False))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, path: Path) -> dict:
    """Restore what `save` wrote into the prepared and registered objects; returns {'step': ...}."""
    accelerator.load_state(str(path))
    return yaml.safe_load((path / "run_state.yaml").read_text())
