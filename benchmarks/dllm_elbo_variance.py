"""Variance of the masked-diffusion likelihood estimators at equal numbers of forward passes.

The tiny mask predictor gets a short LLaDA-style SFT warm-up on the synthetic addition task (so its
predictions are not uniform), then one sequence's log-likelihood is estimated `--repeats` times
(independent mask seeds) by each estimator with 1, 2, 4, 8, 16 forward passes:
  elbo_mc    `passes` draws of (t, Bernoulli mask), weight 1/t        (double Monte Carlo)
  elbo_sdmc  `passes` Gauss-Legendre nodes, one Bernoulli(t) mask each, weight w/t     (GDPO)
  one_step   mean of `passes` draws of d1's fully-masked-completion log-prob (fresh prompt masks);
             a different quantity (a mean-field bound), listed for its variance only
Two completions, each padded with EOS to `--length` tokens (LLaDA's canvas: the padding is part of
the sequence and is scored): the task's answer (a few hard tokens, many easy pads) and a sentence the
model was not trained on (every token about equally hard). The table gives mean, variance and the variance ratio to elbo_mc.

    .venv/bin/python benchmarks/dllm_elbo_variance.py [--repeats 400] [--sft-steps 300] [--length 32]
"""
import argparse
import time

import torch

from dllm.adapter import MaskedDiffusionAdapter
from dllm.estimators import estimate
from dllm.models import build_tiny_mdlm
from mmrl.data import synthetic
from mmrl.models.tiny import build_tokenizer

PASSES = (1, 2, 4, 8, 16)


def warm_up(model, adapter, rows, steps: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    examples = [{"prompt": [{"role": "user", "content": r["question"]}]} for r in rows]
    for _ in range(steps):
        idx = torch.randint(len(rows), (32,), generator=generator).tolist()
        batch = adapter.encode([examples[i] for i in idx], [rows[i]["solution"] for i in idx])
        loss = adapter.sft_loss(model, batch, generator=generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return loss.item()


@torch.no_grad()
def samples(model, adapter, batch, name: str, passes: int, repeats: int) -> torch.Tensor:
    """[repeats] estimates of the sequence log-likelihood."""
    rows = batch.prompt_ids.repeat(repeats, 1), batch.prompt_mask.repeat(repeats, 1)
    completion, mask = batch.completion_ids.repeat(repeats, 1), batch.completion_mask.repeat(repeats, 1)
    seeds = list(range(repeats))
    if name == "one_step":
        draws = [estimate(model, *rows, completion, mask, seeds, k, name, {"p_mask_prompt": 0.15},
                          adapter.mask_token_id).sum(-1) for k in range(passes)]
        return torch.stack(draws).mean(0)
    params = {"passes": passes} if name == "elbo_mc" else {"nodes": passes}
    return estimate(model, *rows, completion, mask, seeds, 0, name, params, adapter.mask_token_id).sum(-1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--length", type=int, default=32, help="completion length (answer + EOS padding)")
    args = parser.parse_args()
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_tiny_mdlm(tok, seed=0)
    adapter = MaskedDiffusionAdapter(tok, tok.mask_token_id, sft_pad_to=args.length)
    rows = synthetic.addition(200, 9, seed=0)
    start = time.perf_counter()
    loss = warm_up(model, adapter, rows, args.sft_steps)
    model.eval()
    print(f"warm-up: {args.sft_steps} SFT steps, last loss {loss:.3f}, {time.perf_counter() - start:.0f} s")
    example = {"prompt": [{"role": "user", "content": rows[0]["question"]}]}
    sequences = {  # (label, completion text): the trained task's answer, and text the model did not see
        "answer": rows[0]["solution"],
        "text": "the sum of each number is the total because we count up so the final answer is there",
    }
    for label, text in sequences.items():
        batch = adapter.encode([example], [text])
        pad = args.length - batch.completion_ids.shape[1]
        if pad > 0:
            batch.completion_ids = torch.nn.functional.pad(batch.completion_ids, (0, pad), value=tok.eos_token_id)
            batch.completion_mask = torch.ones_like(batch.completion_ids)
        length = int(batch.completion_mask.sum())
        print(f"\n{label}: {rows[0]['question']!r} -> {text!r} ({length} tokens with EOS padding)")
        print("\n| passes | estimator | mean | variance | variance / elbo_mc |\n|---|---|---|---|---|")
        for passes in PASSES:
            variances = {}
            for name in ("elbo_mc", "elbo_sdmc", "one_step"):
                values = samples(model, adapter, batch, name, passes, args.repeats)
                variances[name] = values.var().item()
                print(f"| {passes} | {name} | {values.mean().item():.3f} | {variances[name]:.4f} | "
                      f"{variances[name] / variances['elbo_mc']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
