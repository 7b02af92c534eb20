"""The output directory of a run: who owns it, checked before any model is built.

A run owns `output_dir` (its `metrics.jsonl`, `checkpoints/`, `reward_curve.png`, tracker logs). Starting a
new run in a directory that holds another run's metrics or checkpoints is refused, since it would mix or
delete them, unless the run continues it (`resume_from`) or replaces it (`overwrite_output_dir: true`,
which deletes the old run's files first). Every process also writes a probe file there, so an unwritable
directory fails at start-up with an error naming `output_dir`, not after the warm-up.

    claim_output_dir(cfg)   # in a training script, right after the config is read
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
# what a run writes at the top of its output_dir (overwrite_output_dir deletes these, nothing else)
RUN_FILES = (METRICS_FILE, "metrics.superseded.jsonl", "reward_curve.png", "checkpoints", "trackers")


def previous_run(output_dir: str | Path) -> str | None:
    """A description of the run that `output_dir` already holds (its logged steps and checkpoints),
    or None when it holds none."""
    from mmrl.core.checkpoint import list_checkpoints

    root = Path(output_dir)
    metrics = root / METRICS_FILE
    steps = sum(1 for line in metrics.read_text().splitlines() if line.strip()) if metrics.is_file() else 0
    found = [p.name for p in list_checkpoints(root)]
    if not steps and not found:
        return None
    parts = [f"{METRICS_FILE} with {steps} logged steps"] if steps else []
    if found:
        parts.append(f"checkpoints {', '.join(found[-3:])}" + (f" (and {len(found) - 3} more)" if len(found) > 3 else ""))
    return " and ".join(parts)


def claim_output_dir(cfg, exit_on_error: bool = False) -> Path:
    """Check that this run may write `cfg.output_dir` and can: refuse a directory holding another run
    (unless resuming or overwriting), delete the old run's files with `overwrite_output_dir`, create the
    directory and write a probe file from every process. Safe to call more than once. `exit_on_error`
    (the scripts): a refusal ends the process with its message alone, not a traceback."""
    try:
        return _claim(cfg)
    except ValueError as err:
        if exit_on_error:
            raise SystemExit(f"mmrl: {err}") from None
        raise


def _claim(cfg) -> Path:
    root = Path(cfg.output_dir)
    rank = int(os.environ.get("RANK", "0"))
    # with overwrite_output_dir only rank 0 looks (and deletes): the others would race its deletion
    looks = cfg.resume_from is None and (rank == 0 or not cfg.overwrite_output_dir)
    held = previous_run(root) if looks and root.is_dir() else None
    if held:
        if not cfg.overwrite_output_dir:
            raise ValueError(
                f"output_dir: '{root}' already holds a run ({held}). Continue it with resume_from=latest, "
                f"start over and delete it with overwrite_output_dir=true, or choose another output_dir=...")
        log.warning("overwrite_output_dir: deleting the previous run in %s (%s)", root, held)
        for name in RUN_FILES:
            path = root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    probe = root / f".mmrl_write_probe.{rank}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"output_dir: '{root}' cannot be written ({type(err).__name__}: {err}); "
                         "choose a writable directory with output_dir=...") from None
    return root
