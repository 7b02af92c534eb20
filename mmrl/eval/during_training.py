"""Evaluation inside a training run (`eval.every: N`)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from mmrl.eval.runner import evaluate, markdown_table


def eval_cache_root(cfg, fresh: bool, accelerator) -> Path:
    """In-training evaluations cache under <cache>/train; a fresh (not resumed) run clears it, since
    its steps name different weights than the old run's."""
    root = Path(cfg.eval.cache_dir or Path(cfg.output_dir) / "eval_cache") / "train"
    if fresh and accelerator.is_main_process and root.exists():
        shutil.rmtree(root)
    accelerator.wait_for_everyone()
    return root


def evaluate_policy(cfg, accelerator, adapter, policy, benchmarks, cache_root: Path, step: int) -> dict:
    """Benchmarks on the current (unwrapped) policy: metrics `eval/<benchmark>/<metric>` for the
    step's log line; the full result goes to <output_dir>/eval/step_XXXXXX.json."""
    result = evaluate(adapter, policy, benchmarks, cfg.eval, cache_root,
                      f"{Path(cfg.output_dir).resolve()}@step{step}", accelerator)
    if accelerator.is_main_process:
        out = Path(cfg.output_dir) / "eval" / f"step_{step:06d}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_json(), indent=1))
        tqdm.write(f"eval at step {step}:\n{markdown_table(result)}")
    named = {**result.benchmarks, "average": result.average}
    return {f"eval/{b}/{m}": v for b, r in named.items() for m, v in r.items() if isinstance(v, float)}
