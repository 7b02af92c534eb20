"""Bias of the ELBO estimators against the exact ELBO, by enumerating every mask of a completion.

For completions of L tokens (L <= 16: 2^L forwards of the tiny mask predictor), the exact ELBO
sum_M S(M) / (|M| C(L, |M|)) and each estimator's exact expectation over its mask draws
(dllm.estimators.expected_estimate) are computed from the same per-mask sums, so the table has no
Monte Carlo noise. Prints the relative bias (expectation / ELBO - 1) of elbo_mc and of elbo_sdmc's
mask schemes at several node counts. The tiny mask predictor is first fitted with LLaDA's
supervised loss (`--sft-steps`) to 8 random answers of L tokens to one prompt, so that a token's
log-prob depends on how much of the answer is visible, as in a trained model (a random model, or one
that knows a single answer, predicts every token alike whatever the mask, and then every scheme
looks unbiased).

    .venv/bin/python benchmarks/dllm_sdmc_bias.py [--lengths 6 8 16] [--sft-steps 300]
"""
import argparse

import torch

from dllm.adapter import MaskedDiffusionAdapter
from dllm.estimators import exact_elbo, expected_estimate, mask_sums
from dllm.models import build_tiny_mdlm
from mmrl.models.tiny import build_tokenizer



def fitted(adapter, model, prompt, completions, steps: int):
    """The model after `steps` of LLaDA's supervised loss on (prompt, each completion), 16 rows a step."""
    from mmrl.core.batch import RolloutBatch

    rows = 16
    targets = completions.repeat(rows // len(completions), 1)
    batch = RolloutBatch(prompt_ids=prompt.repeat(rows, 1), prompt_mask=torch.ones(rows, prompt.shape[1], dtype=torch.long),
                         completion_ids=targets, completion_mask=torch.ones_like(targets), group_ids=torch.arange(rows))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = adapter.sft_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def floor_count_expectation(sums: torch.Tensor, nodes: int) -> float:
    """The scheme elbo_sdmc used before: exactly max(1, floor(t_n L)) masked tokens, weight w_n / t_n."""
    import math

    from dllm.estimators import all_masks, gauss_legendre

    length = int(math.log2(len(sums)))
    sizes = all_masks(length).sum(-1)
    total = 0.0
    for t, w in zip(*gauss_legendre(nodes)):
        k = max(1, math.floor(t * length))
        total += w / t * float(sums[sizes == k].mean())
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[6, 8, 16])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3, 4, 8, 16])
    parser.add_argument("--sft-steps", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    tok = build_tokenizer()
    model = build_tiny_mdlm(tok, seed=0)
    question = "What is 1 + 2?"
    prompt = tok(question, return_tensors="pt")["input_ids"]
    adapter = MaskedDiffusionAdapter(tok, tok.mask_token_id)
    schemes = ("bernoulli", "nemo", "floor")
    print("| L | ELBO | elbo_mc | " + " | ".join(f"sdmc {m} n={n}" for m in schemes for n in args.nodes) + " |")
    print("|---" * (3 + len(schemes) * len(args.nodes)) + "|")
    for length in args.lengths:
        # 8 answers to the same prompt, random tokens: with nothing visible a token is one of 8, with a
        # neighbour visible it is known, so a token's log-prob depends on how much is masked
        answers = torch.randint(10, len(tok) - 10, (8, length), generator=torch.Generator().manual_seed(length))
        model = fitted(adapter, build_tiny_mdlm(tok, seed=0), prompt, answers, args.sft_steps)
        sums = mask_sums(model, prompt, answers[:1], tok.mask_token_id)
        elbo = exact_elbo(sums)
        cells = [f"{expected_estimate(sums, 'elbo_mc') / elbo - 1:+.1%}"]
        for masking in schemes:
            for nodes in args.nodes:
                value = floor_count_expectation(sums, nodes) if masking == "floor" else \
                    expected_estimate(sums, "elbo_sdmc", {"nodes": nodes, "masking": masking})
                cells.append(f"{value / elbo - 1:+.1%}")
        print(f"| {length} | {elbo:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
