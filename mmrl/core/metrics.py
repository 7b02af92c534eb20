"""Per-step metrics: a jsonl file that survives crashes and resumes, and a reward-curve plot."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

# name -> meaning; the docs table in README is generated from the same words.
METRICS = {
    "reward/mean": "mean total (weighted) reward over the step's completions, all ranks",
    "reward/std": "std of the total reward over the step's completions",
    "reward/<name>/mean": "mean of one reward function's column",
    "reward/errors": "samples a reward function raised on or scored NaN/inf (reward/<name>/errors: per reward)",
    "reward/dropped_groups": "groups left out of the update because a reward (on_error: drop) failed on them",
    "nonfinite/skipped_updates": "inner updates skipped for a non-finite loss or gradient norm",
    "advantage/abs_mean": "mean |advantage|",
    "reward/frac_degenerate_groups": "share of groups whose rewards are all equal (zero advantage)",
    "kl/mean": "mean per-token KL estimate to the reference model in the loss (only when beta > 0 and kl_penalty: loss)",
    "policy/entropy": "mean per-token entropy of the policy on its completions",
    "loss/clip_frac": "share of tokens whose ratio was clipped (loss/clip_frac_low, loss/clip_frac_high by side), mean over the inner updates",
    "loss/ratio_mean": "mean probability ratio pi / pi_old over the loss's tokens, mean over the inner updates (the first is 1)",
    "completion_length/mean": "mean completion length in tokens",
    "group_size/mean": "completions per prompt (group_size/max: the largest group; knapsack varies them)",
    "filter/<rounds|shortfall_groups>": "dynamic_filter: generation rounds, groups short of prompts_per_step",
    "<method>/<stat>": "method statistics: disco/*, llds/*, gtpo/*, entropy_topk/*, tw_grpo/*, vas/*",
    "data/<count>": "data loading: data/skipped = rows dropped for a missing or unreadable image (vlm runs)",
    "loss/total": "policy loss of the last inner update (KL term included)",
    "optim/grad_norm": "gradient norm before clipping (last inner update)",
    "optim/lr": "learning rate",
    "time/step_s": "wall time of the whole step",
    "perf/gen_tokens_per_s": "completion tokens generated per second of the rollout phase, per device",
    "perf/train_tokens_per_s": "prompt + completion tokens x num_iterations per second of the update phase, per device",
    "perf/tflops": "counted model FLOPs of the step per second, per device (mmrl.core.throughput)",
    "perf/mfu": "perf/tflops / the device's peak (trainer.peak_tflops or the GPU table; absent on CPU)",
    "time/<phase>_s": "wall time of the step's phases: rollout (generation, rewards, augmentation), logprobs (old / reference), advantage, update",
    "run/world_size": "number of training processes",
    "eval/<benchmark>/<metric>": "eval.every: pass@k, maj@k, mean@k, no_answer, length per benchmark and average",
}


def _plain(value):
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends one JSON line per step to `<output_dir>/metrics.jsonl`, flushed at once.

    A new run starts the file (run_dir.claim_output_dir has made sure it held no other run's lines).
    On resume from step S the lines of steps after S (logged by the interrupted run after its last
    checkpoint) move to `metrics.superseded.jsonl`, so the file reads as one uninterrupted run and
    nothing is lost. `append`: a run that continues an output_dir without a checkpoint
    (`resume_from=latest` before the first save) appends its lines after the earlier ones."""

    def __init__(self, output_dir: str | Path, enabled: bool = True, resume_step: int | None = None,
                 append: bool = False):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.history: list[dict] = []
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            lines = [line for line in self.path.read_text().splitlines() if line.strip()]
            records = [json.loads(line) for line in lines]
            later = [line for line, r in zip(lines, records) if r.get("step", 0) > resume_step]
            if later:
                with open(self.path.with_name("metrics.superseded.jsonl"), "a") as f:
                    f.write("".join(line + "\n" for line in later))
            self.history = [r for r in records if r.get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.history))
            os.replace(tmp, self.path)
        elif self.path.exists() and not append:
            self.path.unlink()

    def log(self, step: int, metrics: dict) -> dict:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.history.append(record)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        return record

    def summary(self, fraction: float = 0.2) -> str:
        """Mean of each reward metric over the first and last `fraction` of the logged steps."""
        keys = [k for k in (self.history[-1] if self.history else {}) if k.startswith("reward/") and k.endswith("mean")]
        lines = [f"reward summary over {len(self.history)} steps (first {fraction:.0%} -> last {fraction:.0%}):"]
        for key in keys:
            first, last = first_last_fraction([r[key] for r in self.history if r.get(key) is not None], fraction)
            lines.append(f"  {key}: {first:.3f} -> {last:.3f} ({last - first:+.3f})")
        steady = self.history[1:] or self.history  # the first step warms up (allocations, kernels)
        perf = [k for k in (self.history[-1] if self.history else {}) if k.startswith(("perf/", "time/"))]
        if perf:
            means = {k: sum(r[k] for r in steady if r.get(k) is not None) / len(steady) for k in perf}
            lines.append(f"throughput per device, mean of {len(steady)} steps: " +
                         ", ".join(f"{k.split('/', 1)[1]}={v:.4g}" for k, v in means.items()))
        return "\n".join(lines)

    def plot_rewards(self, reward_names: list[str] | None = None, weights: list[float] | None = None,
                     title: str = "") -> Path | None:
        """`reward_curve.png`: one panel for the weighted total (`reward/mean`), then one per reward
        function (`reward/<name>/mean`, unweighted), each against the step."""
        rows = [r for r in self.history if r.get("reward/mean") is not None]
        if not self.enabled or not rows:
            return None
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = reward_names or []
        panels = [("reward/mean", "total (weighted)")]
        for j, name in enumerate(names):
            weight = f", weight {weights[j]:g}" if weights and j < len(weights) else ""
            panels.append((f"reward/{name}/mean", f"{name}{weight}"))
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
        for ax, (key, label) in zip(axes[0], panels):
            points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], lw=1.2)
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("mean reward")
        fig.suptitle(f"{title} ({self.path.parent.name})" if title else self.path.parent.name, fontsize=11)
        out = self.path.with_name("reward_curve.png")
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out


def first_last_fraction(values: list[float], fraction: float = 0.2) -> tuple[float, float]:
    """Mean of the first and of the last `fraction` of a curve (the demos' learning criterion)."""
    k = max(1, int(len(values) * fraction))
    return sum(values[:k]) / k, sum(values[-k:]) / k
