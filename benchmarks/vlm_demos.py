"""Run the tiny VLM and video demo recipes on CPU (seed 0) and print each one's accuracy and its
method's own statistic, mean over the first and last 20% of RL steps.

    .venv/bin/python benchmarks/vlm_demos.py            # grpo, ton, vas, twgrpo, video_grpo, video_reggrpo
    .venv/bin/python benchmarks/vlm_demos.py ton        # one of them
Results go to runs/vlm_demos/<name>/ and the table to runs/vlm_demos/summary.md.
"""
import statistics
import sys
import time
from pathlib import Path

from accelerate.state import AcceleratorState, PartialState

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import train_video  # noqa: E402
import train_vlm  # noqa: E402

from mmrl.core.metrics import first_last_fraction  # noqa: E402
from tables import run_table  # noqa: E402

C = ROOT / "configs"
DEMOS = {  # name: (script, config files, accuracy key, the method's own statistics)
    "grpo": (train_vlm, [C / "tiny_vlm_grpo.yaml"], "reward/accuracy_task/mean", []),
    "ton": (train_vlm, [C / "tiny_vlm_ton.yaml"], "reward/accuracy_task/mean",
            ["reward/empty_think/mean", "completion_length/mean"]),
    "vas": (train_vlm, [C / "tiny_vlm_grpo.yaml", C / "methods" / "vas.yaml"], "reward/accuracy_task/mean",
            ["vas/vps_mean", "vas/vps_std"]),
    "twgrpo": (train_vlm, [C / "tiny_vlm_twgrpo.yaml"], "reward/accuracy_choice_soft/mean",
               ["tw_grpo/weight_mean", "tw_grpo/divergence_max"]),
    "video_grpo": (train_video, [C / "tiny_video_grpo.yaml"], "reward/accuracy_task/mean", []),
    # the batch holds augmented prompts: the learning curve is the unaugmented prompts' rollouts
    "video_reggrpo": (train_video, [C / "tiny_video_reggrpo.yaml"], "augment/original/accuracy_task/mean",
                      ["reward/accuracy_task/mean", "augment/hinted_groups", "augment/noised_groups",
                       "reg_grpo/error"]),
}


def run(name: str, out: Path) -> str:
    script, configs, accuracy, own = DEMOS[name]
    args = [a for c in configs for a in ("--config", str(c))]
    start = time.perf_counter()
    log = script.main([*args, f"output_dir={out / name}", "trainer.log_every=1000", "trainer.save_every=0"])
    seconds = time.perf_counter() - start
    AcceleratorState._reset_state(True)
    PartialState._reset_state()
    cells = []
    for key in [accuracy, *own]:
        a, b = first_last_fraction([r[key] for r in log.history])
        cells.append(f"{key}: {a:.3f} -> {b:.3f}")
    step = statistics.median(r["time/step_s"] for r in log.history)
    return f"| {name} | {len(log.history)} | {'<br>'.join(cells)} | {step:.3f} | {seconds:.0f} |"


def main(argv):
    out = ROOT / "runs" / "vlm_demos"
    run_table("| demo | RL steps | first 20% -> last 20% | median step s | wall s |", argv or list(DEMOS),
              lambda name: run(name, out), out)


if __name__ == "__main__":
    main(sys.argv[1:])
