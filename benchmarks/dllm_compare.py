"""The four tiny masked-diffusion demos on the same task, seeds and budget: d1's one-step estimator,
GDPO (semi-deterministic ELBO + sequence loss), IGPO (inpainting of all-wrong groups) and JustGRPO
(left-to-right rollouts, exact log-probs). Each starts from the same warm-up (500 masked-diffusion SFT
steps on one-digit addition; the one-step, GDPO and IGPO demos now ship 700), samples at temperature 1.0
and trains for the same number of RL steps of 16 prompts x 8 completions, with its own estimator, loss,
number of inner updates and learning rate (its configs/tiny_dllm_*.yaml, with the one-step, GDPO and
IGPO demos' earlier rates, 5e-4, 4e-4 and 5e-4: the settings of the README table).

Reported per method: accuracy of the policy's own samples (IGPO's before inpainted ones replace
some), mean over the first and last 20% of steps, for each seed; the median
step time; and the model forward passes per step (median; a forward is one call of the model on a
batch of rows: a denoising step, a scoring chunk, an update's forward).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dllm_compare.py --steps 200 --seeds 0 1
Results go to runs/dllm_compare/<method>-seed<k>/ and the table to runs/dllm_compare/summary.md.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

from accelerate.state import AcceleratorState, PartialState

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import train_dllm  # noqa: E402

import dllm  # noqa: E402
from mmrl.core.metrics import MetricsLog, first_last_fraction  # noqa: E402
from tables import run_table  # noqa: E402

METHODS = {  # name -> (recipe, overrides that put it on the common task start)
    "one-step (d1)": ("tiny_dllm_grpo.yaml", ["sft.steps=500", "optim.lr=5e-4"]),  # the demos' earlier warm-up and lr
    "GDPO": ("tiny_dllm_gdpo.yaml", ["sft.steps=500", "optim.lr=4e-4"]),
    "IGPO": ("tiny_dllm_igpo.yaml", ["sft.steps=500", "optim.lr=5e-4"]),
    "JustGRPO (ar_exact)": ("tiny_dllm_justgrpo.yaml", []),
}


class ForwardCounter:
    """Counts calls of a model's forward; `take()` returns the count since the last take."""

    def __init__(self):
        self.count = 0

    def attach(self, model) -> None:
        model.register_forward_pre_hook(lambda *_: setattr(self, "count", self.count + 1))

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def run(method: str, seed: int, steps: int, out: Path) -> dict:
    recipe, overrides = METHODS[method]
    counter, build, log_step = ForwardCounter(), dllm.build, MetricsLog.log

    def counted_build(cfg, training=True):
        model, adapter = build(cfg, training)
        counter.attach(model)
        return model, adapter

    def log_with_forwards(self, step, metrics):
        return log_step(self, step, {**metrics, "perf/forward_passes": counter.take()})

    dllm.build, MetricsLog.log = counted_build, log_with_forwards
    name = method.split()[0].lower().replace("-", "_")
    start = time.perf_counter()
    try:
        log = train_dllm.main(["--config", str(ROOT / "configs" / recipe), *overrides, f"trainer.seed={seed}",
                               f"trainer.max_steps={steps}", f"output_dir={out / f'{name}-seed{seed}'}",
                               "overwrite_output_dir=true", "trainer.log_every=1000", "trainer.save_every=0"])
    finally:
        dllm.build, MetricsLog.log = build, log_step
        AcceleratorState._reset_state(True)
        PartialState._reset_state()
    history = log.history
    own = "igpo/original/accuracy_math/mean"  # IGPO's batch holds inpainted samples: its own rollouts' accuracy
    key = own if own in history[0] else "reward/accuracy_math/mean"
    return {"accuracy": first_last_fraction([r[key] for r in history]),
            "step_s": statistics.median(r["time/step_s"] for r in history),
            # the first step's count also holds the warm-up's forwards
            "forwards": statistics.median(r["perf/forward_passes"] for r in history[1:]),
            "seconds": time.perf_counter() - start}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="RL steps of every method")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args(argv)
    out = ROOT / "runs" / "dllm_compare"

    def row(method: str) -> str:
        runs = [run(method, seed, args.steps, out) for seed in args.seeds]
        accuracy = "; ".join(f"{a0:.3f} -> {a1:.3f}" for a0, a1 in (r["accuracy"] for r in runs))
        gain = statistics.mean(a1 - a0 for a0, a1 in (r["accuracy"] for r in runs))
        step_s = "; ".join(f"{r['step_s']:.2f}" for r in runs)
        forwards = "; ".join(f"{r['forwards']:.0f}" for r in runs)
        return f"| {method} | {accuracy} | {gain:+.3f} | {step_s} | {forwards} |"

    seeds = ", ".join(map(str, args.seeds))
    return run_table(f"| method | accuracy first 20% -> last 20% (seeds {seeds}) | mean rise | median step s | "
                     "model forwards per step |", args.methods, row, out)


if __name__ == "__main__":
    main(sys.argv[1:])
