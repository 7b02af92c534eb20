"""Error of the masked-diffusion likelihood estimators against a reference, at equal forward passes.

The tiny mask predictor gets LLaDA's supervised warm-up on the synthetic addition task (`--sft-steps`),
then draws, for each of `--prompts` questions, one completion left to right at temperature 1 on a
canvas of L tokens (L in `--lengths`: the answer, then EOS padding, scored as LLaDA's canvas is). For
each completion and estimator, `--repeats` independent estimates (fresh mask seeds) with K = 1, 2, 4,
8, 16 forward passes give bias, variance and mean squared error against the reference:

  quantity              reference
  log-likelihood        the ELBO: exact, every one of the 2^L masks enumerated, for L <= 10;
                        else elbo_mc with 4096 passes (its standard error printed)
  log-ratio             the same reference for both policies (the same 4096 masks for both when
  (new - old policy)    sampled), after one AdamW step of the warm-up's loss on other answers; each
                        estimator scores old and new policies on shared masks (the same seeds), as
                        the trainer does within an inner update
Estimators:
  elbo_mc     K draws of (t, Bernoulli mask), weight 1/t                        (double Monte Carlo)
  elbo_sdmc   K Gauss-Legendre nodes, one Bernoulli(t) mask each, weight w/t    (GDPO)
  one_step    mean of K draws of d1's fully-masked-completion log-probs (fresh prompt masks): not an
              estimate of the ELBO; its error against it is listed as what using it in its place costs
  ar_exact    JustGRPO: the exact left-to-right likelihood, L passes (one per position), no variance;
              its reference is itself, so the table gives its cost and its distance to the ELBO
Bias, variance and MSE are averaged over the prompts.

    .venv/bin/python benchmarks/dllm_estimator_error.py [--lengths 8 32 128] [--prompts 3] [--repeats 200]
"""
import argparse
import copy
import time

import torch

from dllm.adapter import MaskedDiffusionAdapter
from dllm.estimators import estimate, exact_elbo, mask_sums
from dllm.models import build_tiny_mdlm
from dllm.sampler import generate_blocks
from mmrl.core.adapter import completion_mask_from_eos
from mmrl.data import synthetic
from mmrl.models.tiny import build_tokenizer

PASSES = (1, 2, 4, 8, 16)
SAMPLED = ("elbo_mc", "elbo_sdmc", "one_step")
REFERENCE_PASSES = 4096
EXACT_UP_TO = 10  # enumerate every mask (2^L forwards) up to this length


def sft_steps(model, adapter, rows, steps: int, seed: int, lr: float = 3e-3) -> float:
    """`steps` of LLaDA's supervised loss on 32 random (question, solution) rows a step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    examples = [{"prompt": [{"role": "user", "content": r["question"]}]} for r in rows]
    loss = torch.tensor(0.0)
    for _ in range(steps):
        idx = torch.randint(len(rows), (32,), generator=generator).tolist()
        batch = adapter.encode([examples[i] for i in idx], [rows[i]["solution"] for i in idx])
        loss = adapter.sft_loss(model, batch, generator=generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return loss.item()


@torch.no_grad()
def estimates(model, prompt, completion, name: str, passes: int, seeds: list[int], mask_id: int) -> torch.Tensor:
    """[len(seeds)] estimates of log pi(completion | prompt), one per seed, each with `passes` forwards."""
    rows = len(seeds)
    args = (prompt.repeat(rows, 1), torch.ones(rows, prompt.shape[1], dtype=torch.long), completion.repeat(rows, 1),
            torch.ones(rows, completion.shape[1], dtype=torch.long), seeds)
    if name == "one_step":  # K fresh prompt masks (the inner-iteration index draws them), averaged
        return torch.stack([estimate(model, *args, k, name, {"p_mask_prompt": 0.15}, mask_id).sum(-1)
                            for k in range(passes)]).mean(0)
    params = {"passes": passes} if name == "elbo_mc" else {"nodes": passes} if name == "elbo_sdmc" else {}
    return estimate(model, *args, 0, name, params, mask_id).sum(-1)


@torch.no_grad()
def reference(old, new, prompt, completion, mask_id: int) -> tuple[float, float, float]:
    """(ELBO of old, ELBO of new - ELBO of old, standard error of the ELBO or 0 when exact)."""
    length = completion.shape[1]
    if length <= EXACT_UP_TO:
        a, b = (exact_elbo(mask_sums(m, prompt, completion, mask_id)) for m in (old, new))
        return a, b - a, 0.0
    seeds = list(range(64))  # 64 rows x 64 passes = 4096 draws of (t, mask), the same for both policies
    a = estimates(old, prompt, completion, "elbo_mc", REFERENCE_PASSES // 64, seeds, mask_id)
    b = estimates(new, prompt, completion, "elbo_mc", REFERENCE_PASSES // 64, seeds, mask_id)
    return a.mean().item(), (b - a).mean().item(), (a.std() / len(seeds) ** 0.5).item()


def stats(values: torch.Tensor, target: float) -> tuple[float, float, float]:
    bias = values.mean().item() - target
    variance = values.var().item()
    return bias, variance, bias ** 2 + variance


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--sft-steps", type=int, default=300)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    start = time.perf_counter()
    tok = build_tokenizer()
    mask_id = tok.mask_token_id
    old = build_tiny_mdlm(tok, seed=0)
    adapter = MaskedDiffusionAdapter(tok, mask_id, sft_pad_to=32)
    rows = synthetic.addition(200, 9, seed=0)
    loss = sft_steps(old, adapter, rows, args.sft_steps, seed=0)
    new = copy.deepcopy(old)
    sft_steps(new, adapter, rows[100:], 1, seed=1, lr=1e-3)  # one optimizer step: the policy moved a little
    old.eval(), new.eval()
    print(f"warm-up: {args.sft_steps} SFT steps (last loss {loss:.3f}); then one AdamW step (lr 1e-3) for the new "
          f"policy; {time.perf_counter() - start:.0f} s")
    results = {}  # (quantity, L, estimator, K) -> [(bias, variance, mse) per prompt]
    distance = {}  # L -> [(AR likelihood - ELBO, AR log-ratio - ELBO log-ratio) per prompt]
    for length in args.lengths:
        for p in range(args.prompts):
            example = {"prompt": [{"role": "user", "content": rows[p]["question"]}]}
            prompt = adapter.encode([example], [""]).prompt_ids
            with torch.no_grad():
                completion = generate_blocks(old, prompt, torch.ones_like(prompt), length, 1, length, mask_id,
                                             temperature=1.0, generator=torch.Generator().manual_seed(p))
            answer = completion_mask_from_eos(completion, adapter.eos_token_ids)
            completion = completion.masked_fill(answer == 0, adapter.eos_token_ids[0])  # LLaDA's EOS padding
            elbo, elbo_ratio, error = reference(old, new, prompt, completion, mask_id)
            ar_old = estimates(old, prompt, completion, "ar_exact", length, [0], mask_id).item()
            ar_new = estimates(new, prompt, completion, "ar_exact", length, [0], mask_id).item()
            distance.setdefault(length, []).append((ar_old - elbo, (ar_new - ar_old) - elbo_ratio))
            text = tok.decode(completion[0]).replace("<|im_end|>", "")
            print(f"\nL={length} prompt {p} {rows[p]['question']!r} -> {text!r}: ELBO {elbo:.3f}"
                  f"{f' (+- {error:.3f})' if error else ' (exact)'}, log-ratio {elbo_ratio:+.4f}; "
                  f"AR likelihood {ar_old:.3f}, AR log-ratio {ar_new - ar_old:+.4f}", flush=True)
            seeds = list(range(1000, 1000 + args.repeats))
            for name in SAMPLED:
                for k in PASSES:
                    a = estimates(old, prompt, completion, name, k, seeds, mask_id)
                    b = estimates(new, prompt, completion, name, k, seeds, mask_id)
                    results.setdefault(("loglik", length, name, k), []).append(stats(a, elbo))
                    results.setdefault(("ratio", length, name, k), []).append(stats(b - a, elbo_ratio))
    print(f"\n{time.perf_counter() - start:.0f} s in all")
    for quantity, title in (("loglik", "log-likelihood, against the ELBO"),
                            ("ratio", "log-ratio log pi_new - log pi_old (shared masks), against the ELBO's")):
        print(f"\n{title}: MSE (bias; variance), mean over {args.prompts} prompts")
        print("| L | estimator | " + " | ".join(f"K = {k}" for k in PASSES) + " |")
        print("|---|---|" + "---|" * len(PASSES))
        for length in args.lengths:
            for name in SAMPLED:
                cells = []
                for k in PASSES:
                    b, v, m = (sum(x) / len(x) for x in zip(*results[(quantity, length, name, k)]))
                    cells.append(f"{m:.3g} ({b:+.3g}; {v:.3g})")
                print(f"| {length} | {name} | " + " | ".join(cells) + " |")
            d = [x[0 if quantity == "loglik" else 1] for x in distance[length]]
            print(f"| {length} | ar_exact, {length} passes | exact (0; 0): its own likelihood; minus the ELBO"
                  f"{'' if quantity == 'loglik' else ' log-ratio'}: {sum(d) / len(d):+.3g} |" + " |" * (len(PASSES) - 1))


if __name__ == "__main__":
    main()
