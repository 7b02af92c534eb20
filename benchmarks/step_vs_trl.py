"""One GRPO step, mmrl against TRL's GRPOTrainer, on the same tiny model, prompts, group size (G = 8),
fixed completion length (min = max new tokens), optimizer (AdamW, lr 1e-6, betas (0.9, 0.999), clip
1.0) and reward, fp32 on CPU. Each framework runs in a process of its own, alternating, `--reps` times;
each process times `--steps` steps after one warm-up step. Printed: the median step time and the
peak RSS of each, and mmrl / TRL ratios.

Two shapes (`--shape`):
- `tiny`: a 4-layer, 128-wide Qwen2 LM on the 400-token tokenizer, 32 completion tokens. Cases: `short`
  (32-token prompts), `long` (1024-token prompts, each shared by its group of 8) and `vlm` (a tiny
  Qwen2.5-VL, a 56x56 image plus a 1024-token prompt).
- `realistic`: a random Qwen2-shaped LM of about 47M parameters (8 layers x 512 hidden, MLP 2048,
  8 heads / 2 KV heads, a 32,768-token BPE vocabulary trained here), saved to a local directory that
  both frameworks load with `from_pretrained`; 128 completion tokens. Cases: `short` (256-token
  prompts), `long` (1024-token prompts) and `vlm` (a Qwen2.5-VL with the same text stack and a
  4-block, 256-wide vision tower: a 448x448 image, 256 image tokens, plus a 512-token prompt).
Both shapes: 2 prompts x G = 8 completions per step. `--gradient-checkpointing on|off` sets it in both
frameworks (TRL 1.16 turns it on by default; mmrl off).

Printed per case: median step, generation and update time of each framework (mmrl: its `time/rollout_s`
and `time/update_s`; TRL: the time spent in `_generate`, and the step less `_generate_and_score_completions`),
the median peak RSS, and mmrl / TRL ratios. TRL is a benchmark dependency only (`pip install -e '.[bench]'`).

    .venv/bin/python benchmarks/step_vs_trl.py                       # tiny shape, all cases, 5 repetitions
    .venv/bin/python benchmarks/step_vs_trl.py --cases long --reps 3
    .venv/bin/python benchmarks/step_vs_trl.py --shape realistic --reps 3 --steps 2 --gradient-checkpointing off
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
G, PROMPTS = 8, 2
SHAPES = {  # completion tokens, image side (pixels), {case: (prompt tokens, vision)}
    "tiny": (32, 56, {"short": (32, False), "long": (1024, False), "vlm": (1024, True)}),
    "realistic": (128, 448, {"short": (256, False), "long": (1024, False), "vlm": (512, True)}),
}
TINY = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2}
REALISTIC = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 8, "num_attention_heads": 8,
             "num_key_value_heads": 2}
REALISTIC_VISION = {"vision_depth": 4, "vision_hidden_size": 256}
REALISTIC_VOCAB = 32768
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


def image(seed: int, side: int):
    """A noise image (every patch differs, as in a photograph)."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def realistic_checkpoint(vision: bool) -> str:
    """Save (once, in a cache directory) the realistic-shape model with its 32k tokenizer and return the
    directory: both frameworks load it with `from_pretrained`, as they would a downloaded checkpoint."""
    directory = Path(tempfile.gettempdir()) / f"mmrl_bench_realistic_{'vlm' if vision else 'text'}"
    if (directory / "config.json").exists():
        return str(directory)
    from mmrl.models.tiny import build_tiny_causal_lm, build_tokenizer

    rng = random.Random(0)  # random letter words give the BPE trainer enough distinct pairs for 32k merges
    corpus = [" ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 12)))
                       for _ in range(200)) for _ in range(2000)]
    tokenizer = build_tokenizer(extra_corpus=corpus, vocab_size=REALISTIC_VOCAB)
    if vision:
        from mmrl.vlm.tiny import build_processor, build_tiny_vlm

        side = SHAPES["realistic"][1]
        build_tiny_vlm(tokenizer, **REALISTIC, **REALISTIC_VISION).save_pretrained(directory)
        build_processor(tokenizer, side * side, side * side).save_pretrained(directory)
    else:
        build_tiny_causal_lm(tokenizer, **REALISTIC).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return str(directory)


def mmrl_config(shape: str, case: str, steps: int, output_dir: str, checkpointing: bool):
    from mmrl.config import load_config

    new_tokens, side, cases = SHAPES[shape]
    length, vision = cases[case]
    model = ([f"model.name_or_path={realistic_checkpoint(vision)}"] if shape == "realistic" else
             ["model.name_or_path=tiny", *(f"model.tiny.{k}={v}" for k, v in TINY.items())])
    overrides = [f"output_dir={output_dir}", f"model.modality={'vlm' if vision else 'text'}", *model,
                 f"model.vision.min_pixels={side * side}", f"model.vision.max_pixels={side * side}",
                 f"model.gradient_checkpointing={str(checkpointing).lower()}", f"rollout.group_size={G}",
                 f"rollout.max_new_tokens={new_tokens}", f"rollout.min_new_tokens={new_tokens}",
                 "rollout.temperature=1.0", "rewards=[{name: bench_length}]",
                 "algorithm.advantage=grpo", "algorithm.loss=grpo", "algorithm.beta=0.0", "algorithm.num_iterations=1",
                 "algorithm.aggregation=token-mean", f"trainer.max_steps={steps + 1}", f"trainer.prompts_per_step={PROMPTS}",
                 "trainer.save_every=0", "trainer.log_every=100000", f"trainer.logprob_chunk_rows={PROMPTS * G}",
                 "optim.lr=1e-6", "optim.adam_beta2=0.999", "optim.max_grad_norm=1.0", "sft.steps=0",
                 f"data.max_prompt_length={length + 64}"]
    return load_config(None, overrides)


def examples(tokenizer, shape: str, case: str, count: int) -> list[dict]:
    _, side, cases = SHAPES[shape]
    length, vision = cases[case]
    texts = make_prompts(tokenizer, length, count)
    if vision:
        return [{"prompt": [{"role": "user", "content": [{"type": "image", "image": image(i, side)},
                                                          {"type": "text", "text": t}]}], "answer": "", "solution": ""}
                for i, t in enumerate(texts)]
    return [{"prompt": [{"role": "user", "content": t}], "answer": "", "solution": ""} for t in texts]


def run_mmrl(shape: str, case: str, steps: int, checkpointing: bool) -> dict:
    from mmrl.core.trainer import train
    from mmrl.rewards import REWARDS

    if "bench_length" not in REWARDS:
        REWARDS.register("bench_length")(bench_reward)
    with tempfile.TemporaryDirectory() as out:
        cfg = mmrl_config(shape, case, steps, out, checkpointing)
        if SHAPES[shape][2][case][1]:
            import mmrl.vlm as family
        else:
            import mmrl.text as family
        model, adapter = family.build(cfg)
        log = train(cfg, adapter, model, examples(adapter.tokenizer, shape, case, PROMPTS * (steps + 1)))
    rows = log.history[1:]
    return {"times": [r["time/step_s"] for r in rows], "generation": [r["time/rollout_s"] for r in rows],
            "update": [r["time/update_s"] for r in rows]}


def run_trl(shape: str, case: str, steps: int, checkpointing: bool) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    vision = SHAPES[shape][2][case][1]
    with tempfile.TemporaryDirectory() as out:
        cfg = mmrl_config(shape, case, steps, out, checkpointing)
        if vision:
            from mmrl.vlm import load_vlm

            model, processing = load_vlm(cfg.model, seed=cfg.trainer.seed)
            tokenizer = processing.tokenizer
        else:
            from mmrl.models.loading import load_causal_lm

            model, processing = load_causal_lm(cfg.model, seed=cfg.trainer.seed)
            tokenizer = processing
        rows = examples(tokenizer, shape, case, PROMPTS * (steps + 1))
        if vision:  # TRL's VLM format: an `image` column and an image placeholder in the prompt
            data = Dataset.from_list([{"prompt": [{"role": "user", "content": [{"type": "image"},
                                                                              {"type": "text", "text": r["prompt"][0]["content"][1]["text"]}]}],
                                       "image": r["prompt"][0]["content"][0]["image"]} for r in rows])
        else:
            data = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
        times: list[float] = []
        spent = {"_generate": 0.0, "_generate_and_score_completions": 0.0}
        generation: list[float] = []
        update: list[float] = []

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                self.t0 = time.perf_counter()
                spent.update(dict.fromkeys(spent, 0.0))

            def on_step_end(self, args, state, control, **kwargs):
                times.append(time.perf_counter() - self.t0)
                generation.append(spent["_generate"])
                update.append(times[-1] - spent["_generate_and_score_completions"])

        args = GRPOConfig(output_dir=out, per_device_train_batch_size=PROMPTS * G, num_generations=G,
                          max_completion_length=cfg.rollout.max_new_tokens,
                          generation_kwargs={"min_new_tokens": cfg.rollout.min_new_tokens},
                          gradient_checkpointing=checkpointing,
                          learning_rate=1e-6, adam_beta2=0.999, max_grad_norm=1.0, beta=0.0, num_iterations=1,
                          loss_type="dapo", max_steps=steps + 1, logging_steps=100000, save_strategy="no",
                          report_to="none", use_cpu=True, bf16=False, temperature=1.0, shuffle_dataset=False,
                          seed=0, lr_scheduler_type="constant", warmup_steps=0)
        trainer = GRPOTrainer(model=model, reward_funcs=[bench_reward], args=args, train_dataset=data,
                              processing_class=processing, callbacks=[Timer()])
        for name in spent:  # time the generation and the whole rollout phase of each step
            setattr(trainer, name, timed(getattr(trainer, name), name, spent))
        trainer.train()
    return {"times": times[1:], "generation": generation[1:], "update": update[1:]}


def timed(method, name: str, spent: dict):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - t0
    return wrapper


def worker(framework: str, shape: str, case: str, steps: int, checkpointing: bool, result: str) -> None:
    out = (run_mmrl if framework == "mmrl" else run_trl)(shape, case, steps, checkpointing)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(result).write_text(json.dumps(out))


def median(results: list[dict], key: str) -> float:
    """Median over every timed step of every repetition (or over the processes, for a scalar)."""
    values = [v for r in results for v in (r[key] if isinstance(r[key], list) else [r[key]])]
    return statistics.median(values)


def run_worker(framework: str, args, case: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run([sys.executable, __file__, "--shape", args.shape, "--steps", str(args.steps),
                               "--gradient-checkpointing", args.gradient_checkpointing, "--worker", framework, case,
                               f.name], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        if done.returncode:
            err.seek(0)
            raise SystemExit(f"{framework} {case} failed (exit {done.returncode}):\n{err.read()[-4000:]}")
        return json.loads(Path(f.name).read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--cases", default="short,long,vlm")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--gradient-checkpointing", choices=["on", "off"], default="off")
    parser.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "CASE", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    checkpointing = args.gradient_checkpointing == "on"
    if args.worker:
        return worker(args.worker[0], args.shape, args.worker[1], args.steps, checkpointing, args.worker[2])
    rows = [f"shape {args.shape}, gradient checkpointing {args.gradient_checkpointing}, {args.reps} repetitions x "
            f"{args.steps} timed steps",
            "| case | TRL step s | mmrl step s | ratio | TRL gen s | mmrl gen s | TRL update s | mmrl update s "
            "| TRL peak RSS MB | mmrl peak RSS MB | ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in args.cases.split(","):
        results = {"trl": [], "mmrl": []}
        for rep in range(args.reps):
            for framework in (("trl", "mmrl") if rep % 2 == 0 else ("mmrl", "trl")):
                results[framework].append(run_worker(framework, args, case))
                last = results[framework][-1]
                print(f"{case} rep {rep} {framework}: median step {statistics.median(last['times']):.3f} s "
                      f"(generation {statistics.median(last['generation']):.3f} s, update "
                      f"{statistics.median(last['update']):.3f} s), peak RSS {last['peak_rss_mb']:.0f} MB", flush=True)
        t, m = ({key: median(results[f], key) for key in ("times", "generation", "update", "peak_rss_mb")}
                for f in ("trl", "mmrl"))
        rows.append(f"| {case} | {t['times']:.2f} | {m['times']:.2f} | {m['times'] / t['times']:.2f} | "
                    f"{t['generation']:.2f} | {m['generation']:.2f} | {t['update']:.2f} | {m['update']:.2f} | "
                    f"{t['peak_rss_mb']:.0f} | {m['peak_rss_mb']:.0f} | {m['peak_rss_mb'] / t['peak_rss_mb']:.2f} |")
        print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
