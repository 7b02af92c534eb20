"""Where a masked-diffusion policy's answer format goes, and which tokens carry the policy gradient.

For a checkpoint of a tiny dLLM demo (`<output_dir>/checkpoints/step_N`) and its config:
1. samples: `--samples` completions of every prompt of the config's data, with the config's rollout
   settings; accuracy, completions without a well-formed `<answer>N</answer>` (malformed), prompts
   whose samples are all wrong / all right / mixed, and the commonest malformed texts.
2. gradient split: on the first `--grad-prompts` prompts (one rollout batch), the gradient of the
   policy loss at ratio 1 with the advantage r - mean (GDPO's; per-sequence length mean, as
   `seq-mean-token-mean`), restricted to the answer's format tokens (every token up to the first EOS
   that is not a number) and to its number tokens, for d1's one-step estimator and GDPO's elbo_sdmc
   (3 nodes, one mask each). The G samples of a prompt share their masks. Under one_step every token
   is scored in the same context for all G samples (the whole completion masked), so where their
   format tokens coincide the advantage-weighted gradients cancel; an ELBO estimator scores a token
   with the sample's own tokens partly visible, where they need not.

    .venv/bin/python benchmarks/dllm_format_drift.py --config configs/tiny_dllm_gdpo.yaml \\
        --checkpoint runs/tiny_dllm_gdpo/checkpoints/step_001000 [--samples 8] [--grad-prompts 32] [--seeds 0 1 2]
"""
import argparse
import collections
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

import dllm  # noqa: E402
from mmrl.config import load_config  # noqa: E402
from mmrl.core.advantages import mean_centered_advantages  # noqa: E402
from mmrl.data import load_examples  # noqa: E402

ANSWER = re.compile(r"<answer>(\d+)</answer>")
ESTIMATORS = {"one_step": {"p_mask_prompt": 0.0}, "elbo_sdmc": {"nodes": 3, "masks_per_node": 1}}


def number_positions(tokenizer, completion_ids: torch.Tensor) -> torch.Tensor:
    """[N, C] bool: tokens that decode to a number (the answer's digits)."""
    ids = completion_ids.cpu()
    table = torch.zeros(int(ids.max()) + 1, dtype=torch.bool)
    for t in ids.unique().tolist():
        table[t] = re.fullmatch(r"\s*\d+\s*", tokenizer.decode([t])) is not None
    return table[ids]


def gradient_split(model, adapter, batch, advantages: torch.Tensor, parts: dict) -> dict:
    """{part: L2 norm of the gradient of -mean_i A_i / |y_i| sum_{t in part} term_it}, each part a [N, C] bool
    mask, with the adapter's current estimator (ratio 1: the on-policy gradient of every clipped loss)."""
    params = [p for p in model.parameters() if p.requires_grad]
    weighted = -(advantages / batch.completion_mask.sum(1).clamp(min=1))[:, None] * adapter.log_probs(model, batch)
    out = {}
    for name, part in parts.items():  # one scoring pass, one gradient per part
        grads = torch.autograd.grad((weighted * part).sum() / len(advantages), params, retain_graph=True,
                                    allow_unused=True)
        out[name] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
    return out


def sample_report(model, adapter, examples, samples: int, rollout_cfg, chunk: int = 25) -> dict:
    right = malformed = 0
    per_prompt, forms = [], collections.Counter()
    for lo in range(0, len(examples), chunk):
        part = examples[lo:lo + chunk]
        with torch.no_grad():
            texts = adapter.generate(model, part, samples, rollout_cfg).completions_text
        for j, ex in enumerate(part):
            ok = 0
            for text in texts[j * samples:(j + 1) * samples]:
                match = ANSWER.search(text)
                if match is None:
                    malformed += 1
                    forms[text.strip()] += 1
                elif match.group(1) == str(ex["answer"]).strip():
                    ok += 1
            right += ok
            per_prompt.append(ok)
    n = samples * len(examples)
    return {"accuracy": right / n, "malformed": malformed, "samples": n,
            "all_wrong": sum(k == 0 for k in per_prompt), "all_right": sum(k == samples for k in per_prompt),
            "mixed": sum(0 < k < samples for k in per_prompt), "forms": forms.most_common(3)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True, help="a run's checkpoints/step_N directory")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--grad-prompts", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--skip-samples", action="store_true")
    args = parser.parse_args(argv)

    from mmrl.rewards import REWARDS

    cfg = load_config(args.config, [f"model.name_or_path={Path(args.checkpoint) / 'model'}"])
    model, adapter = dllm.build(cfg, training=False)
    examples = load_examples(cfg.data)
    print(f"checkpoint {args.checkpoint}")
    if not args.skip_samples:
        torch.manual_seed(args.seeds[0])
        r = sample_report(model, adapter, examples, args.samples, cfg.rollout)
        print(f"samples: accuracy {r['accuracy']:.3f}, malformed {r['malformed']} of {r['samples']}, prompts all wrong / "
              f"all right / mixed {r['all_wrong']} / {r['all_right']} / {r['mixed']}; commonest malformed: {r['forms']}")
    accuracy = REWARDS.get("accuracy_math")
    print("| seed | accuracy | mixed groups | estimator | gradient norm: format tokens | number tokens | all |")
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        torch.manual_seed(seed)
        with torch.no_grad():
            batch = adapter.generate(model, examples[:args.grad_prompts], args.samples, cfg.rollout)
        rewards = torch.tensor(accuracy(batch.completions_text, batch.examples), dtype=torch.float32)
        advantages = mean_centered_advantages(rewards, batch.group_ids)  # GDPO's r - mean
        scope = batch.completion_mask.bool()
        numbers = number_positions(adapter.tokenizer, batch.completion_ids) & scope
        parts = {"format": scope & ~numbers, "numbers": numbers, "all": scope}
        mixed = int((rewards.view(-1, args.samples).std(1) > 0).sum())
        model.train()
        for name, params in ESTIMATORS.items():
            adapter.estimator, adapter.estimator_params = name, params
            g = gradient_split(model, adapter, batch, advantages, parts)
            print(f"| {seed} | {rewards.mean():.3f} | {mixed} of {args.grad_prompts} | {name} | {g['format']:.4f} | "
                  f"{g['numbers']:.4f} | {g['all']:.4f} |")
        model.eval()


if __name__ == "__main__":
    main()
