"""Run the tiny text demo with grpo and with each method overlay on the same seed and budget, and
print the accuracy reward curve summary (mean over the first and last 20% of steps).

    .venv/bin/python benchmarks/compare_methods.py                 # every configs/methods/*.yaml
    .venv/bin/python benchmarks/compare_methods.py gdpo spo        # some of them
Results go to runs/compare_methods/<method>/ and a table to runs/compare_methods/summary.md.
"""
import sys
import time
from pathlib import Path

from accelerate.state import AcceleratorState, PartialState

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import train_text  # noqa: E402

from mmrl.core.metrics import first_last_fraction  # noqa: E402
from tables import run_table  # noqa: E402


def run(method: str, out: Path) -> dict:
    configs = ["--config", str(ROOT / "configs" / "tiny_text_grpo.yaml")]
    if method != "grpo":
        configs += ["--config", str(ROOT / "configs" / "methods" / f"{method}.yaml")]
    start = time.perf_counter()
    log = train_text.main([*configs, f"output_dir={out / method}", "trainer.log_every=1000", "trainer.save_every=0"])
    seconds = time.perf_counter() - start
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    row = {"method": method, "seconds": seconds, "steps": len(log.history)}
    for key in ("reward/accuracy_math/mean", "reward/mean"):
        row[key] = first_last_fraction([r[key] for r in log.history])
    return row


def main(argv):
    methods = argv or ["grpo"] + sorted(p.stem for p in (ROOT / "configs" / "methods").glob("*.yaml"))
    out = ROOT / "runs" / "compare_methods"

    def row(method: str) -> str:
        r = run(method, out)
        (a0, a1), (t0, t1) = r["reward/accuracy_math/mean"], r["reward/mean"]
        return f"| {method} | {a0:.3f} | {a1:.3f} | {t0:.3f} -> {t1:.3f} | {r['seconds']:.0f} |"

    run_table("| method | accuracy first 20% | accuracy last 20% | total reward first -> last | wall s |",
              methods, row, out)


if __name__ == "__main__":
    main(sys.argv[1:])
