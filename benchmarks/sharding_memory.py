"""Per-rank memory of one training step without sharding (1 process) and with FSDP2 (2 processes).

A random Qwen2-shaped causal LM of about 150M parameters (hidden 768, 12 layers, MLP 3072, vocab
32000, untied embeddings; fp32) takes one AdamW step on a batch of random tokens. Each process
reports the bytes it holds of parameters, gradients and optimizer state (a DTensor counts its local
shard only; measured after the optimizer step, before the gradients are freed) and its peak RSS
(resource.getrusage: the interpreter, torch, the model as built before sharding, and activations).
The sharded run goes through mmrl.core.sharding.place, the code path of `trainer.sharding: fsdp2`.

    .venv/bin/python benchmarks/sharding_memory.py            # both runs, then the table
    .venv/bin/python benchmarks/sharding_memory.py --layers 4 # a smaller model

On CPU the two processes use gloo (ACCELERATE_USE_CPU=true); on a GPU machine drop that variable and
pass --processes N to shard over N GPUs.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))


def build_model(layers: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=layers,
                         num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=1024,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


def measure(mode: str, layers: int, rows: int, length: int) -> dict:
    """One AdamW step; this process's bytes of training state and peak RSS."""
    from accelerate import Accelerator

    from mmrl.config import load_config
    from mmrl.core import sharding

    accelerator = Accelerator()
    model = build_model(layers)
    num_params = sum(p.numel() for p in model.parameters())
    if mode == "fsdp2":
        model = sharding.place(model, load_config(None, ["trainer.sharding=fsdp2"]), accelerator)
    else:
        model = model.to(accelerator.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(accelerator.process_index)
    tokens = torch.randint(0, 32000, (rows, length), generator=generator).to(accelerator.device)
    loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    optimizer.step()
    state = sharding.training_state_bytes(model, optimizer)
    optimizer.zero_grad(set_to_none=True)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"mode": mode, "rank": accelerator.process_index, "world_size": accelerator.num_processes,
            "parameters_total": num_params, "loss": loss.item(), "peak_rss": peak_rss,
            "peak_gpu": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None, **state}


def run_all(args) -> list[dict]:
    """The unsharded run in a process of its own, then the sharded run on `processes` processes."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--layers", str(args.layers), "--rows", str(args.rows), "--length", str(args.length)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        subprocess.run([sys.executable, __file__, "--mode", "none", "--out", f"{tmp}/none", *common],
                       check=True, env=env)
        launcher = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes",
                    str(args.processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if not torch.cuda.is_available():
            env["ACCELERATE_USE_CPU"] = "true"
        subprocess.run([*launcher, __file__, "--mode", "fsdp2", "--out", f"{tmp}/fsdp2", *common], check=True, env=env)
        for path in sorted(Path(tmp).glob("*.json")):
            results.append(json.loads(path.read_text()))
    return results


def table(results: list[dict]) -> str:
    mb = 2 ** 20
    lines = ["| run | rank | parameters MB | gradients MB | optimizer MB | state MB | peak RSS MB | loss |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        total = r["parameters"] + r["gradients"] + r["optimizer"]
        lines.append(f"| {r['mode']} x{r['world_size']} | {r['rank']} | {r['parameters'] / mb:.0f} | "
                     f"{r['gradients'] / mb:.0f} | {r['optimizer'] / mb:.0f} | {total / mb:.0f} | "
                     f"{r['peak_rss'] / mb:.0f} | {r['loss']:.4f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--mode", choices=["none", "fsdp2"], help="(internal) measure one run in this process")
    parser.add_argument("--out", help="(internal) where this process writes its numbers")
    args = parser.parse_args()
    if args.mode:
        result = measure(args.mode, args.layers, args.rows, args.length)
        Path(f"{args.out}.rank{result['rank']}.json").write_text(json.dumps(result))
        from mmrl.core.trainer import end_processes
        end_processes()
        return
    results = run_all(args)
    print(f"model: {results[0]['parameters_total'] / 1e6:.1f}M parameters, fp32, AdamW; "
          f"batch {args.rows} x {args.length} tokens")
    print(table(results))
    modes = ("none", "fsdp2")
    state = {m: max(r["parameters"] + r["gradients"] + r["optimizer"] for r in results if r["mode"] == m) for m in modes}
    rss = {m: max(r["peak_rss"] for r in results if r["mode"] == m) for m in modes}
    print(f"per-rank peak RSS ratio fsdp2/none: {rss['fsdp2'] / rss['none']:.3f}")
    print(f"per-rank state ratio fsdp2/none: {state['fsdp2'] / state['none']:.3f}")


if __name__ == "__main__":
    main()
