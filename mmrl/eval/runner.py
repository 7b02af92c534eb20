"""Run benchmarks through any adapter's `generate`, with a resumable completion cache.

Every completion is appended to a jsonl cache keyed by (model, benchmark, sample index) as soon as
its batch is generated, so an interrupted evaluation picks up where it stopped. The cache file's
name hashes the model fingerprint, the sampling settings and the benchmark's rendered prompts:
change any of them and the samples are drawn afresh. Under several processes each one generates
the problems i with i % world_size == rank and writes its own shard; grading sees all shards.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmrl.config import RewardConfig, RolloutConfig
from mmrl.eval.benchmarks import Benchmark
from mmrl.eval.metrics import majority_at_k, mean_at_k, pass_at_k
from mmrl.rewards import REWARDS, score


def model_fingerprint(name_or_path: str, extra: str = "") -> str:
    """Identity of a checkpoint for the cache: its resolved path and the names, sizes and mtimes of
    its files (re-saving weights to the same path invalidates the cache)."""
    path = Path(name_or_path)
    if not path.is_dir():
        return f"{name_or_path}|{extra}"
    files = sorted(p for p in path.iterdir() if p.is_file())
    stats = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return f"{path.resolve()}|{extra}|" + ",".join(stats)


@contextlib.contextmanager
def preserved_rng():
    """Evaluation inside training must not move the training RNG (exact resume depends on it)."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


class CompletionCache:
    """One benchmark's samples: `<root>/<benchmark>-<key>.rank<r>.jsonl`, one line per sample."""

    def __init__(self, root: str | Path, bench: Benchmark, settings: dict, model_key: str, rank: int):
        prompts = json.dumps([e["prompt"] for e in bench.examples])
        blob = json.dumps({"model": model_key, "settings": settings, "prompts": prompts}, sort_keys=True)
        key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self.root = Path(root)
        self.stem = f"{bench.name}-{key}"
        self.path = self.root / f"{self.stem}.rank{rank}.jsonl"

    def load(self) -> dict[tuple[int, int], dict]:
        """{(row, sample): record} from every rank's shard; a line cut short by a crash is skipped."""
        done = {}
        for shard in sorted(self.root.glob(f"{self.stem}.rank*.jsonl")):
            for line in shard.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[(rec["row"], rec["sample"])] = rec
        return done

    def append(self, records: list[dict]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()


def sampling_settings(eval_cfg) -> dict:
    return {k: getattr(eval_cfg, k) for k in ("temperature", "top_p", "top_k", "max_new_tokens")}


def generate_missing(adapter, model, bench: Benchmark, eval_cfg, cache: CompletionCache,
                     rank: int = 0, world: int = 1, show_progress: bool = True) -> list[dict]:
    """Generate this rank's missing samples in batches of `eval.batch_size` problems, appending each
    batch to the cache; returns this rank's records (cached and new)."""
    done = cache.load()
    mine = list(range(rank, len(bench.examples), world))
    todo = [(i, [s for s in range(bench.num_samples) if (i, s) not in done]) for i in mine]
    todo = [(i, missing) for i, missing in todo if missing]
    rollout = RolloutConfig(group_size=bench.num_samples, **sampling_settings(eval_cfg))
    batches = [todo[j:j + eval_cfg.batch_size] for j in range(0, len(todo), eval_cfg.batch_size)]
    for batch in tqdm(batches, desc=f"eval {bench.name}", disable=not show_progress or not batches,
                      dynamic_ncols=True):
        first_row, first_sample = batch[0][0], batch[0][1][0]
        torch.manual_seed(eval_cfg.seed * 1_000_003 + first_row * 1_009 + first_sample)
        out = adapter.generate(model, [bench.examples[i] for i, _ in batch], [len(m) for _, m in batch], rollout)
        lengths = out.completion_mask.sum(-1).tolist()
        slots = [(i, s) for i, missing in batch for s in missing]
        records = [{"row": i, "sample": s, "completion": text, "length": int(n)}
                   for (i, s), text, n in zip(slots, out.completions_text, lengths)]
        cache.append(records)
        done.update({(r["row"], r["sample"]): r for r in records})
    return [done[(i, s)] for i in mine for s in range(bench.num_samples)]


def grade(bench: Benchmark, records: list[dict], threshold: float) -> dict:
    """Per-benchmark metrics from all samples (records of every row and sample index)."""
    by_row = {}
    for r in records:
        by_row.setdefault(r["row"], {})[r["sample"]] = r
    rows = sorted(by_row)
    flat = [by_row[i][s] for i in rows for s in range(bench.num_samples)]
    examples = [bench.examples[r["row"]] for r in flat]
    reward_fn = REWARDS.get(bench.reward)
    values, _, failures, _ = score([RewardConfig(name=bench.reward, params=bench.reward_params, on_error="zero")],
                                   [r["completion"] for r in flat], examples, [r["length"] for r in flat])
    errors = failures[bench.reward]
    correct = (values[:, 0] >= threshold).tolist()
    extract = getattr(reward_fn, "extract_answer", None)
    same = getattr(reward_fn, "same_answer", None)
    answers = [extract(r["completion"]) for r in flat] if extract else [None] * len(flat)
    n = bench.num_samples
    per_row = [(correct[j * n:(j + 1) * n], answers[j * n:(j + 1) * n]) for j in range(len(rows))]
    metrics: dict[str, float] = {}
    for k in bench.ks:
        metrics[f"pass@{k}"] = sum(pass_at_k(n, sum(c), k) for c, _ in per_row) / len(rows)
        metrics[f"mean@{k}"] = sum(mean_at_k(c, k) for c, _ in per_row) / len(rows)
        if extract and same:
            metrics[f"maj@{k}"] = sum(majority_at_k(a, c, k, same) for c, a in per_row) / len(rows)
    if extract:
        metrics["no_answer"] = sum(a is None for a in answers) / len(answers)
    metrics["length"] = sum(r["length"] for r in flat) / len(flat)
    return {"problems": len(rows), "samples": n, "reward": bench.reward, "reward_errors": errors, **metrics}


def average(results: dict[str, dict]) -> dict[str, float]:
    """Unweighted mean over benchmarks of every metric all of them report."""
    metric_sets = [{k for k, v in r.items() if isinstance(v, float)} for r in results.values()]
    shared = set.intersection(*metric_sets) if metric_sets else set()
    return {k: sum(r[k] for r in results.values()) / len(results) for k in sorted(shared)}


@dataclass
class EvalResult:
    benchmarks: dict[str, dict]
    average: dict[str, float]
    settings: dict

    def to_json(self) -> dict:
        return {"settings": self.settings, "benchmarks": self.benchmarks, "average": self.average}


def evaluate(adapter, model, benchmarks: list[Benchmark], eval_cfg, cache_root, model_key: str,
             accelerator=None) -> EvalResult:
    """Sample, cache and grade every benchmark; under accelerate the problems are split over ranks."""
    from accelerate.utils import gather_object

    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    settings = sampling_settings(eval_cfg)
    results = {}
    for bench in benchmarks:
        cache = CompletionCache(cache_root, bench, settings, model_key, rank)
        with preserved_rng():
            records = generate_missing(adapter, model, bench, eval_cfg, cache, rank, world,
                                       show_progress=rank == 0)
        if world > 1:
            records = gather_object(records)
        results[bench.name] = grade(bench, records, eval_cfg.correct_threshold)
    return EvalResult(results, average(results), {**settings, "model": model_key.split("|")[0],
                                                  "correct_threshold": eval_cfg.correct_threshold})


def markdown_table(result: EvalResult) -> str:
    """Benchmarks as rows, metrics (in %) as columns; '-' where a benchmark lacks a metric."""
    rows = {**result.benchmarks, "**average**": result.average}
    order = {"pass": 0, "maj": 1, "mean": 2}

    def sort_key(m):
        if "@" in m:
            kind, k = m.split("@")
            return (0, int(k), order.get(kind, 3))
        return (1, 0, m)
    metrics = sorted({m for r in rows.values() for m, v in r.items() if isinstance(v, float)}, key=sort_key)
    head = ["benchmark", "problems", "n", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows.items():
        cells = [name, str(r.get("problems", "")), str(r.get("samples", ""))]
        for m in metrics:
            v = r.get(m)
            cells.append("-" if v is None else f"{v:.1f}" if m == "length" else f"{100 * v:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
