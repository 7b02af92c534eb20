"""One GRPO step, mmrl against TRL's GRPOTrainer, on the same tiny model, prompts, group size (G = 8),
fixed completion length (min = max new tokens), optimizer (AdamW, lr 1e-6, betas (0.9, 0.999), clip
1.0) and reward, fp32 on CPU. Each framework runs in a process of its own, alternating, `--reps` times;
each process times `--steps` steps after one warm-up step. Printed: the median step time and the
peak RSS of each, and mmrl / TRL ratios.

Cases: `short` (32-token prompts), `long` (1024-token prompts, each shared by its group of 8) and
`vlm` (a tiny Qwen2.5-VL, an image plus a 1024-token prompt). TRL is a benchmark dependency only
(`pip install -e '.[bench]'`).

    .venv/bin/python benchmarks/step_vs_trl.py                       # all cases, 5 repetitions
    .venv/bin/python benchmarks/step_vs_trl.py --cases long --reps 3
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
G, PROMPTS, NEW_TOKENS = 8, 2, 32
CASES = {  # prompt tokens, vision
    "short": (32, False),
    "long": (1024, False),
    "vlm": (1024, True),
}
TINY = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2}
WORDS = "the of and to in is was for on are with as by at from that this have an be or not which it".split()


def bench_reward(completions, **kwargs) -> list[float]:
    """A cheap reward with spread: the completion's length in characters, scaled."""
    return [len(c if isinstance(c, str) else str(c)) / 100.0 for c in completions]


def make_prompts(tokenizer, length: int, count: int, seed: int = 0) -> list[str]:
    """`count` texts of exactly `length` tokens (random common words, cut at the token level)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = " ".join(rng.choice(WORDS) for _ in range(length * 2))
        ids = tokenizer(words, add_special_tokens=False)["input_ids"][:length]
        out.append(tokenizer.decode(ids))
    return out


def image(seed: int):
    from PIL import Image

    rng = random.Random(seed)
    return Image.new("RGB", (56, 56), tuple(rng.randrange(256) for _ in range(3)))


def mmrl_config(case: str, steps: int, output_dir: str):
    from mmrl.config import load_config

    length, vision = CASES[case]
    overrides = [f"output_dir={output_dir}", f"model.modality={'vlm' if vision else 'text'}", "model.name_or_path=tiny",
                 *(f"model.tiny.{k}={v}" for k, v in TINY.items()), "model.vision.min_pixels=3136",
                 "model.vision.max_pixels=3136", f"rollout.group_size={G}", f"rollout.max_new_tokens={NEW_TOKENS}",
                 f"rollout.min_new_tokens={NEW_TOKENS}", "rollout.temperature=1.0", "rewards=[{name: bench_length}]",
                 "algorithm.advantage=grpo", "algorithm.loss=grpo", "algorithm.beta=0.0", "algorithm.num_iterations=1",
                 "algorithm.aggregation=token-mean", f"trainer.max_steps={steps + 1}", f"trainer.prompts_per_step={PROMPTS}",
                 "trainer.save_every=0", "trainer.log_every=100000", f"trainer.logprob_chunk_rows={PROMPTS * G}",
                 "optim.lr=1e-6", "optim.adam_beta2=0.999", "optim.max_grad_norm=1.0", "sft.steps=0",
                 f"data.max_prompt_length={length + 64}"]
    return load_config(None, overrides)


def examples(tokenizer, case: str, count: int) -> list[dict]:
    length, vision = CASES[case]
    texts = make_prompts(tokenizer, length, count)
    if vision:
        return [{"prompt": [{"role": "user", "content": [{"type": "image", "image": image(i)},
                                                          {"type": "text", "text": t}]}], "answer": "", "solution": ""}
                for i, t in enumerate(texts)]
    return [{"prompt": [{"role": "user", "content": t}], "answer": "", "solution": ""} for t in texts]


def run_mmrl(case: str, steps: int) -> list[float]:
    from mmrl.core.trainer import train
    from mmrl.rewards import REWARDS

    if "bench_length" not in REWARDS:
        REWARDS.register("bench_length")(bench_reward)
    with tempfile.TemporaryDirectory() as out:
        cfg = mmrl_config(case, steps, out)
        if CASES[case][1]:
            import mmrl.vlm as family
        else:
            import mmrl.text as family
        model, adapter = family.build(cfg)
        log = train(cfg, adapter, model, examples(adapter.tokenizer, case, PROMPTS * (steps + 1)))
    return [r["step_time_s"] for r in log.history[1:]]


def run_trl(case: str, steps: int) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    with tempfile.TemporaryDirectory() as out:
        cfg = mmrl_config(case, steps, out)
        if CASES[case][1]:
            from mmrl.vlm import load_vlm

            model, processing = load_vlm(cfg.model, seed=cfg.trainer.seed)
            tokenizer = processing.tokenizer
        else:
            from mmrl.models.loading import load_causal_lm

            model, processing = load_causal_lm(cfg.model, seed=cfg.trainer.seed)
            tokenizer = processing
        rows = examples(tokenizer, case, PROMPTS * (steps + 1))
        if CASES[case][1]:  # TRL's VLM format: an `image` column and an image placeholder in the prompt
            data = Dataset.from_list([{"prompt": [{"role": "user", "content": [{"type": "image"},
                                                                              {"type": "text", "text": r["prompt"][0]["content"][1]["text"]}]}],
                                       "image": r["prompt"][0]["content"][0]["image"]} for r in rows])
        else:
            data = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
        times: list[float] = []

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                times.append(time.perf_counter() - self.t0)

        args = GRPOConfig(output_dir=out, per_device_train_batch_size=PROMPTS * G, num_generations=G,
                          max_completion_length=NEW_TOKENS, generation_kwargs={"min_new_tokens": NEW_TOKENS},
                          learning_rate=1e-6, adam_beta2=0.999, max_grad_norm=1.0, beta=0.0, num_iterations=1,
                          loss_type="dapo", max_steps=steps + 1, logging_steps=100000, save_strategy="no",
                          report_to="none", use_cpu=True, bf16=False, temperature=1.0, shuffle_dataset=False,
                          seed=0, lr_scheduler_type="constant", warmup_steps=0)
        trainer = GRPOTrainer(model=model, reward_funcs=[bench_reward], args=args, train_dataset=data,
                              processing_class=processing, callbacks=[Timer()])
        trainer.train()
    return times[1:]


def worker(framework: str, case: str, steps: int, result: str) -> None:
    times = (run_mmrl if framework == "mmrl" else run_trl)(case, steps)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(result).write_text(json.dumps({"times": times, "peak_rss_mb": peak_mb}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "CASE", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.steps, args.worker[2])
    rows = ["| case | TRL step s | mmrl step s | ratio | TRL peak RSS MB | mmrl peak RSS MB | ratio |",
            "|---|---|---|---|---|---|---|"]
    for case in args.cases.split(","):
        results = {"trl": [], "mmrl": []}
        for rep in range(args.reps):
            for framework in (("trl", "mmrl") if rep % 2 == 0 else ("mmrl", "trl")):
                with tempfile.NamedTemporaryFile(suffix=".json") as f:
                    subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--worker", framework, case,
                                    f.name], check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    results[framework].append(json.loads(Path(f.name).read_text()))
                print(f"{case} rep {rep} {framework}: median step {statistics.median(results[framework][-1]['times']):.3f} s,"
                      f" peak RSS {results[framework][-1]['peak_rss_mb']:.0f} MB", flush=True)
        step = {k: statistics.median(t for r in v for t in r["times"]) for k, v in results.items()}
        rss = {k: statistics.median(r["peak_rss_mb"] for r in v) for k, v in results.items()}
        rows.append(f"| {case} | {step['trl']:.3f} | {step['mmrl']:.3f} | {step['mmrl'] / step['trl']:.2f} | "
                    f"{rss['trl']:.0f} | {rss['mmrl']:.0f} | {rss['mmrl'] / rss['trl']:.2f} |")
        print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
