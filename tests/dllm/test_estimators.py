"""Likelihood estimators on a tiny mask predictor: the ELBO of a 3-token completion against an exact
enumeration over masks, unbiasedness of elbo_mc, the quadrature target of elbo_sdmc, d1's one-step
log-probs, and identical masks for identical (seed, iteration)."""
import itertools
import math

import pytest
import torch

from dllm.estimators import estimate, gauss_legendre
from dllm.models import build_tiny_mdlm
from mmrl.models.tiny import build_tokenizer


@pytest.fixture(scope="module")
def setup():
    tok = build_tokenizer()
    model = build_tiny_mdlm(tok, seed=0).eval()
    prompt = tok("What is 1 + 2?", return_tensors="pt")["input_ids"]
    completion = torch.tensor([[tok.convert_tokens_to_ids("3"), tok.convert_tokens_to_ids("4"), tok.eos_token_id]])
    return tok, model, prompt, completion


def masked_logp(model, prompt, completion, mask, mask_id):
    """sum over masked positions of log p(y_i | completion with `mask` masked)."""
    canvas = torch.cat([prompt, completion.masked_fill(mask, mask_id)], dim=1)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=canvas).logits[:, prompt.shape[1]:], -1)
    return float(logp.gather(-1, completion.unsqueeze(-1)).squeeze(-1)[mask].sum())


def enumerate_masks(setup):
    """f(m) for every non-empty mask m of the 3 completion tokens."""
    tok, model, prompt, completion = setup
    f = {}
    for bits in itertools.product([False, True], repeat=3):
        if any(bits):
            f[bits] = masked_logp(model, prompt, completion, torch.tensor([bits]), tok.mask_token_id)
    return f


def run(setup, name, params, rows, iteration=0, seed0=0):
    tok, model, prompt, completion = setup
    with torch.no_grad():
        terms = estimate(model, prompt.repeat(rows, 1), torch.ones(rows, prompt.shape[1], dtype=torch.long),
                         completion.repeat(rows, 1), torch.ones(rows, 3, dtype=torch.long), list(range(seed0, seed0 + rows)),
                         iteration, name, params, tok.mask_token_id)
    return terms.sum(-1)


def test_gauss_legendre_nodes_and_exactness():
    t, w = gauss_legendre(2)
    assert t == pytest.approx([0.5 - 0.5 / math.sqrt(3), 0.5 + 0.5 / math.sqrt(3)]) and w == pytest.approx([0.5, 0.5])
    t, w = gauss_legendre(3)
    assert t == pytest.approx([0.5 - 0.5 * math.sqrt(0.6), 0.5, 0.5 + 0.5 * math.sqrt(0.6)])
    assert w == pytest.approx([5 / 18, 8 / 18, 5 / 18])
    assert sum(wi * ti ** 5 for ti, wi in zip(t, w)) == pytest.approx(1 / 6)  # degree 2N - 1 = 5 is exact


def test_elbo_mc_is_unbiased_for_the_exact_elbo(setup):
    """ELBO = int_0^1 (1/t) E_{m ~ Bernoulli(t)^3} f(m) dt = sum_m B(|m|, 4 - |m|) f(m), with
    B(1, 3) = 1/3, B(2, 2) = 1/6, B(3, 1) = 1/3. elbo_mc draws p = (1 - eps) t + eps: its expectation
    uses c_k = 1/(1 - eps) int_eps^1 p^(k-1) (1 - p)^(3-k) dp, close to B for eps = 1e-3."""
    f = enumerate_masks(setup)
    exact = sum({1: 1 / 3, 2: 1 / 6, 3: 1 / 3}[sum(m)] * v for m, v in f.items())
    eps = 1e-3
    grid = torch.linspace(eps, 1, 200_001, dtype=torch.float64)
    coef = {k: float(torch.trapezoid(grid ** (k - 1) * (1 - grid) ** (3 - k), grid)) / (1 - eps) for k in (1, 2, 3)}
    expected = sum(coef[sum(m)] * v for m, v in f.items())
    assert expected == pytest.approx(exact, rel=0.01)
    samples = run(setup, "elbo_mc", {"passes": 1, "eps": eps}, rows=6000)
    se = samples.std().item() / math.sqrt(len(samples))
    assert abs(samples.mean().item() - expected) < 4 * se, (samples.mean().item(), expected, se)
    # several passes average several draws: the same expectation
    four = run(setup, "elbo_mc", {"passes": 4, "eps": eps}, rows=1500, seed0=10_000)
    assert abs(four.mean().item() - expected) < 4 * four.std().item() / math.sqrt(len(four))


def test_elbo_sdmc_expectation_is_its_quadrature_sum(setup):
    """3 Gauss nodes on L = 3 tokens: k = max(1, floor(3 t)) = 1, 1, 2 masked tokens; the expectation
    over masks is sum_n (w_n / t_n) mean_{|m| = k_n} f(m). (On 3 tokens the floor makes k / (t L) far
    from 1 at the first node, so this target is not close to the ELBO; on completions of realistic
    length it is: GDPO's estimator, weights as published.)"""
    f = enumerate_masks(setup)
    t, w = gauss_legendre(3)
    mean_k = {k: sum(v for m, v in f.items() if sum(m) == k) / math.comb(3, k) for k in (1, 2, 3)}
    target = sum(wn / tn * mean_k[max(1, math.floor(tn * 3))] for tn, wn in zip(t, w))
    samples = run(setup, "elbo_sdmc", {"nodes": 3}, rows=3000)
    se = samples.std().item() / math.sqrt(len(samples))
    assert abs(samples.mean().item() - target) < 4 * se + 1e-6, (samples.mean().item(), target)


def test_one_step_is_the_fully_masked_completion_logp(setup):
    tok, model, prompt, completion = setup
    with torch.no_grad():
        terms = estimate(model, prompt, torch.ones_like(prompt), completion, torch.ones_like(completion), [5], 0,
                         "one_step", {"p_mask_prompt": 0.0}, tok.mask_token_id)
    canvas = torch.cat([prompt, torch.full_like(completion, tok.mask_token_id)], dim=1)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=canvas).logits[:, prompt.shape[1]:], -1)
    torch.testing.assert_close(terms, logp.gather(-1, completion.unsqueeze(-1)).squeeze(-1))


@pytest.mark.parametrize("name,params", [("one_step", {"p_mask_prompt": 0.5}), ("elbo_mc", {"passes": 2}),
                                         ("elbo_sdmc", {"nodes": 2})])
def test_masks_follow_seed_and_iteration(setup, name, params):
    a = run(setup, name, params, rows=4, iteration=0)
    torch.testing.assert_close(run(setup, name, params, rows=4, iteration=0), a)  # same seeds: same masks
    assert not torch.allclose(run(setup, name, params, rows=4, iteration=1), a)  # next inner iteration: new masks


def test_estimates_carry_gradients(setup):
    tok, model, prompt, completion = setup
    terms = estimate(model, prompt, torch.ones_like(prompt), completion, torch.ones_like(completion), [1], 0,
                     "elbo_sdmc", {"nodes": 2}, tok.mask_token_id)
    terms.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()
