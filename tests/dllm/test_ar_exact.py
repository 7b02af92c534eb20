"""JustGRPO's left-to-right rollouts and their exact likelihood (`model.diffusion.estimator: ar_exact`):
the per-token log-probs against a direct per-position computation, the rollout's sampling frequencies
against exp(log-likelihood), and the settings under which the likelihood would not be the rollout's."""
import math
from collections import Counter

import pytest
import torch

from dllm.adapter import MaskedDiffusionAdapter
from dllm.estimators import estimate
from dllm.models import build_tiny_mdlm
from dllm.sampler import generate_blocks
from mmrl.config import RolloutConfig, load_config
from mmrl.models.tiny import build_tokenizer
from tests.dllm.test_sampler import Sharpened


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def direct_log_probs(model, prompt, attention, completion, mask_id, temperature, shift):
    """log p(y_t | prompt, y_<t, masks from t on) one position at a time, at `temperature`, mask token
    excluded: the distribution the left-to-right sampler draws y_t from."""
    rows, width = completion.shape
    out = torch.zeros(rows, width)
    for t in range(width):
        canvas = torch.cat([prompt, completion[:, :t], torch.full((rows, width - t), mask_id)], 1)
        logits = model(input_ids=canvas, attention_mask=torch.cat([attention, torch.ones_like(completion)], 1)).logits
        if shift:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        logits = logits[:, prompt.shape[1] + t].float() / temperature
        logits[:, mask_id] = float("-inf")
        out[:, t] = torch.log_softmax(logits, -1).gather(-1, completion[:, t:t + 1]).squeeze(-1)
    return out


@pytest.mark.parametrize("shift", [False, True])
def test_ar_exact_equals_a_direct_per_position_computation(tok, shift):
    model = build_tiny_mdlm(tok, seed=0).eval()
    enc = tok(["What is 1 + 2?", "What is 3 + 4? Say it"], padding=True, return_tensors="pt")
    prompt, attention = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        completion = generate_blocks(model, prompt, attention, gen_length=6, block_length=1, steps=6,
                                     mask_token_id=tok.mask_token_id, temperature=0.7, shift_logits=shift,
                                     generator=torch.Generator().manual_seed(0))
        expected = direct_log_probs(model, prompt, attention, completion, tok.mask_token_id, 0.7, shift)
    got, entropy = estimate(model, prompt, attention, completion, torch.ones_like(completion), [0, 1], 0, "ar_exact", {},
                            tok.mask_token_id, shift_logits=shift, with_entropy=True, temperature=0.7)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert entropy.shape == got.shape and (entropy > 0).all()
    # the same at another inner iteration and seed (nothing random) and through the adapter's chunks
    adapter = MaskedDiffusionAdapter(tok, tok.mask_token_id, block_length=1, steps=6, estimator="ar_exact",
                                     shift_logits=shift, logprob_chunk_rows=1, temperature=0.7)
    from mmrl.core.batch import RolloutBatch
    batch = RolloutBatch(prompt_ids=prompt, prompt_mask=attention, completion_ids=completion,
                         completion_mask=torch.ones_like(completion), group_ids=torch.tensor([0, 1]),
                         extras={"mask_seed": torch.tensor([5, 9])})
    with torch.no_grad():
        torch.testing.assert_close(adapter.log_probs(model, batch, iteration=3), expected, atol=1e-5, rtol=0)
    # a wrong temperature is a different distribution: the check above has the power to see it
    with torch.no_grad():
        untempered = direct_log_probs(model, prompt, attention, completion, tok.mask_token_id, 1.0, shift)
    assert (untempered - expected).abs().max() > 1e-3


def test_left_to_right_rollouts_are_drawn_with_the_scored_probabilities(tok):
    """4000 two-token rollouts of one prompt at temperature 0.7 from a peaked model (logits x 20): each sequence seen
    often enough appears with frequency exp(sum of its ar_exact terms), within 4 standard errors;
    the untempered likelihood misses the most frequent one by far."""
    model = Sharpened(build_tiny_mdlm(tok, seed=0).eval(), factor=20)
    prompt = tok(["What is 1 + 2?"], return_tensors="pt")["input_ids"]
    n, mask_id = 4000, tok.mask_token_id
    with torch.no_grad():
        samples = generate_blocks(model, prompt.repeat(n, 1), torch.ones(n, prompt.shape[1], dtype=torch.long), 2, 1, 2,
                                  mask_id, temperature=0.7, generator=torch.Generator().manual_seed(1))
    counts = Counter(map(tuple, samples.tolist()))
    frequent = [seq for seq, c in counts.most_common() if c >= 100]
    assert len(frequent) >= 3
    seqs = torch.tensor(frequent)
    ones = torch.ones(len(seqs), prompt.shape[1], dtype=torch.long)
    with torch.no_grad():
        logp = estimate(model, prompt.repeat(len(seqs), 1), ones, seqs, torch.ones_like(seqs), [0] * len(seqs), 0,
                        "ar_exact", {}, mask_id, temperature=0.7).sum(-1)
        untempered = estimate(model, prompt.repeat(len(seqs), 1), ones, seqs, torch.ones_like(seqs), [0] * len(seqs), 0,
                              "ar_exact", {}, mask_id, temperature=1.0).sum(-1)
    for seq, lp in zip(frequent, logp.tolist()):
        p, freq = math.exp(lp), counts[seq] / n
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n), (seq, freq, p)
    p0, freq0 = math.exp(untempered[0].item()), counts[frequent[0]] / n
    assert abs(freq0 - p0) > 8 * math.sqrt(p0 * (1 - p0) / n)


@pytest.mark.parametrize("overrides,message", [
    (["model.diffusion.block_length=8", "model.diffusion.steps=8"],
     r"set model.diffusion.block_length: 1 and model.diffusion.steps: 16 \(rollout.max_new_tokens\), not 8 and 8"),
    (["model.diffusion.steps=null"], r"model.diffusion.steps: 16 \(rollout.max_new_tokens\), not 1 and None"),
    (["rollout.top_k=5"], r"rollout.top_k: 0 and rollout.top_p: 1.0"),
])
def test_ar_exact_refuses_rollouts_that_are_not_left_to_right(overrides, message):
    import dllm

    cfg = load_config(None, ["model.modality=dllm", "model.diffusion.estimator=ar_exact", "model.diffusion.block_length=1",
                             "model.diffusion.steps=16", "rollout.max_new_tokens=16", *overrides])
    _, adapter = dllm.build(cfg, training=False)
    with pytest.raises(ValueError, match=message):
        adapter.check_rollout(cfg.rollout)


def test_ar_exact_takes_a_per_token_kl_and_scores_the_whole_canvas(tok):
    import dllm

    cfg = load_config(None, ["model.modality=dllm", "model.diffusion.estimator=ar_exact", "model.diffusion.block_length=1",
                             "model.diffusion.steps=4", "rollout.max_new_tokens=4", "algorithm.beta=0.04",
                             "model.diffusion.loss_scope=canvas", "rollout.group_size=2"])
    dllm.check_kl(cfg)  # exact per-token log-probs: k3 is a KL estimate, unlike on ELBO terms
    model, adapter = dllm.build(cfg, training=False)
    adapter.check_rollout(cfg.rollout)
    batch = adapter.generate(model, [{"prompt": [{"role": "user", "content": "What is 1 + 2?"}]}], 2,
                             RolloutConfig(max_new_tokens=4, temperature=1.0))
    assert batch.loss_mask is not None and batch.loss_mask.all()

