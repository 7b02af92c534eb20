import math

import pytest
import torch

from mmrl.core import losses
from mmrl.core.losses import AGGREGATIONS, LOSSES


def _single(logp_val, old_val, adv, **kw):
    logp = torch.tensor([[logp_val]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[old_val]], dtype=torch.float64)
    loss, stats = losses.compute("grpo", logp, old, torch.tensor([adv], dtype=torch.float64),
                                 torch.ones(1, 1), **kw)
    loss.backward()
    return loss.item(), logp.grad.item(), stats


def test_grpo_clip_positive_advantage_is_clipped_above():
    # r = 1.3, A = +1, eps 0.2: loss -1.2 and no gradient
    loss, grad, stats = _single(math.log(1.3), 0.0, 1.0, eps=0.2)
    assert loss == pytest.approx(-1.2) and grad == 0.0
    assert stats["loss/clip_frac_high"] == 1 and stats["loss/clip_frac_low"] == 0


def test_grpo_clip_negative_advantage_above_range_still_flows():
    # r = 1.3, A = -1: min(-1.3, -1.2) = -1.3 -> loss 1.3, d loss / d logp = r = 1.3
    loss, grad, _ = _single(math.log(1.3), 0.0, -1.0, eps=0.2)
    assert loss == pytest.approx(1.3) and grad == pytest.approx(1.3)


def test_clip_higher_is_asymmetric():
    # DAPO: r = 1.25 < 1.28 with A = +1 is not clipped ...
    loss, grad, _ = _single(math.log(1.25), 0.0, 1.0, eps=0.2, eps_high=0.28)
    assert loss == pytest.approx(-1.25) and grad == pytest.approx(-1.25)
    # ... r = 0.75 < 0.8 with A = -1 is clipped: loss = -min(-0.75, -0.8) = 0.8, no gradient
    loss, grad, stats = _single(math.log(0.75), 0.0, -1.0, eps=0.2, eps_high=0.28)
    assert loss == pytest.approx(0.8) and grad == 0.0 and stats["loss/clip_frac_low"] == 1


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True), torch.tensor([-1.1], dtype=torch.float64)
    k3 = losses.kl_k3(logp, ref)
    assert k3.item() == pytest.approx(math.exp(-0.1) + 0.1 - 1) and k3.item() == pytest.approx(0.004837, abs=1e-6)
    k3.backward()
    assert logp.grad.item() == pytest.approx(1 - math.exp(-0.1))  # 0.0952
    assert losses.kl_k1(logp, ref).item() == pytest.approx(0.1)
    assert losses.kl_k2(logp, ref).item() == pytest.approx(0.005)


def test_kl_enters_the_loss_per_token_with_beta():
    logp = torch.tensor([[-1.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.1]], dtype=torch.float64)
    loss, stats = losses.compute("grpo", logp, logp, torch.zeros(1, dtype=torch.float64), torch.ones(1, 1),
                                 ref_logp=ref, beta=0.5)
    assert loss.item() == pytest.approx(0.5 * (math.exp(-0.1) + 0.1 - 1))
    assert stats["kl/mean"].item() == pytest.approx(0.004837, abs=1e-6)
    with pytest.raises(ValueError, match="ref_logp"):
        losses.compute("grpo", logp, logp, torch.zeros(1), torch.ones(1, 1), beta=0.1)


def test_aggregations_hand_computed():
    # lengths 2 and 4; l = 1 on seq 1, 0 on seq 2
    mask = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1]])
    l = torch.tensor([[1.0, 1, 9, 9], [0, 0, 0, 0]])  # 9s sit on padding and must not count
    agg = lambda name, **kw: AGGREGATIONS.get(name)(l, mask, **kw).item()
    assert agg("token-mean") == pytest.approx(1 / 3)
    assert agg("seq-mean-token-mean") == pytest.approx(0.5)
    assert agg("seq-mean-token-sum") == pytest.approx(1.0)
    assert agg("seq-mean-token-sum-norm", max_len=4) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="max_len"):
        agg("seq-mean-token-sum-norm")


@pytest.mark.parametrize("aggregation", sorted(AGGREGATIONS))
def test_split_batch_with_global_normalisers_matches_whole_batch(aggregation):
    torch.manual_seed(0)
    logp = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    old = logp.detach() + 0.1 * torch.randn(4, 5, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 0.3, -0.8], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float64)
    kw = dict(aggregation=aggregation, max_len=5)
    whole, _ = losses.compute("grpo", logp, old, adv, mask, **kw)
    (g_whole,) = torch.autograd.grad(whole, logp)
    parts = 0
    for rows in (slice(0, 2), slice(2, 4)):  # two micro-batches, normalised by whole-batch counts
        part, _ = losses.compute("grpo", logp[rows], old[rows], adv[rows], mask[rows],
                                 num_seqs=4, num_tokens=mask.sum(), **kw)
        parts = parts + part
    (g_parts,) = torch.autograd.grad(parts, logp)
    torch.testing.assert_close(parts, whole)
    torch.testing.assert_close(g_parts, g_whole)


def test_grpo_gradient_matches_plain_autograd_reference():
    torch.manual_seed(1)
    logp = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    old = logp.detach() + 0.3 * torch.randn(3, 4, dtype=torch.float64)
    ref = logp.detach() + 0.2 * torch.randn(3, 4, dtype=torch.float64)
    adv = torch.tensor([1.2, -0.7, 0.4], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float64)
    eps, eps_high, beta = 0.2, 0.28, 0.04
    loss, _ = losses.compute("grpo", logp, old, adv, mask, ref_logp=ref, eps=eps, eps_high=eps_high, beta=beta)
    (g,) = torch.autograd.grad(loss, logp)
    # literal DeepSeekMath objective, one token at a time
    total = 0
    for i in range(3):
        seq = 0
        n = int(mask[i].sum())
        for t in range(n):
            r = torch.exp(logp[i, t] - old[i, t])
            surrogate = torch.minimum(r * adv[i], torch.clamp(r, 1 - eps, 1 + eps_high) * adv[i])
            kl = torch.exp(ref[i, t] - logp[i, t]) - (ref[i, t] - logp[i, t]) - 1
            seq = seq + (-(surrogate) + beta * kl) / n
        total = total + seq / 3
    (g_ref,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(loss, total)
    torch.testing.assert_close(g, g_ref)


def test_gspo_clips_the_whole_sequence():
    # token log-ratios [0.001, -0.003]: s = exp(-0.001) = 0.9990 < 1 - 3e-4 -> clipped for A = -1
    old = torch.zeros(1, 2, dtype=torch.float64)
    logp = torch.tensor([[0.001, -0.003]], dtype=torch.float64, requires_grad=True)
    loss, stats = losses.compute("gspo", logp, old, torch.tensor([-1.0], dtype=torch.float64), torch.ones(1, 2))
    loss.backward()
    assert loss.item() == pytest.approx(1 - 3e-4)
    assert torch.all(logp.grad == 0) and stats["loss/clip_frac_low"] == 1
    # token-level GRPO with eps 0.2 would clip neither token
    _, stats = losses.compute("grpo", logp, old, torch.tensor([-1.0], dtype=torch.float64), torch.ones(1, 2))
    assert stats["loss/clip_frac"] == 0


def test_gspo_unclipped_gradient_is_length_normalised():
    # s = exp(mean log-ratio); d(-s A)/d logp_t = -A s / |y| on each of the 2 valid tokens
    old = torch.zeros(1, 3, dtype=torch.float64)
    logp = torch.tensor([[1e-4, -1e-4, 5.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    loss, _ = losses.compute("gspo", logp, old, torch.tensor([2.0], dtype=torch.float64), mask)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, -1.0, 0.0]], dtype=torch.float64))
    assert loss.item() == pytest.approx(-2.0)


def test_token_weights_scale_token_losses():
    logp = torch.zeros(1, 2)
    loss, _ = losses.compute("grpo", logp, logp, torch.tensor([1.0]), torch.ones(1, 2),
                             token_weights=torch.tensor([[2.0, 0.0]]), aggregation="token-mean")
    assert loss.item() == pytest.approx(-1.0)  # (-1 * 2 + -1 * 0) / 2


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_runs_through_compute(name):
    logp = torch.randn(2, 3, requires_grad=True)
    loss, stats = losses.compute(name, logp, logp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 3),
                                 group_ids=torch.tensor([0, 0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all() and logp.grad.abs().sum() > 0


def test_unknown_loss_and_aggregation_name_valid_choices():
    with pytest.raises(KeyError, match="valid"):
        losses.compute("ppo2", torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1))
    with pytest.raises(KeyError, match="token-mean"):
        losses.compute("grpo", torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), aggregation="x")


def _sapo(r, adv, **kw):
    logp = torch.tensor([[math.log(r)]], dtype=torch.float64, requires_grad=True)
    loss, stats = losses.compute("sapo", logp, torch.zeros(1, 1, dtype=torch.float64),
                                 torch.tensor([adv], dtype=torch.float64), torch.ones(1, 1), **kw)
    (g,) = torch.autograd.grad(loss, logp)
    return loss.item(), g.item() / r, stats  # d loss / d r = (d loss / d logp) / r


def test_sapo_soft_gate_hand_computed():
    # A=+1, r=1.5, tau=1: f = 4 sigmoid(0.5) = 2.4898, df/dr = 4 s (1 - s) = 0.9400 (a hard clip gives 0)
    loss, dloss_dr, stats = _sapo(1.5, 1.0)
    assert loss == pytest.approx(-2.4898, abs=1e-4) and dloss_dr == pytest.approx(-0.9400, abs=1e-4)
    assert stats["loss/clip_frac"] == 0
    assert _sapo(2.0, 1.0)[1] == pytest.approx(-0.7864, abs=1e-4)
    # A=-1 uses tau_neg = 1.05: weight 4 s (1 - s) with s = sigmoid(0.525) -> 0.9341
    assert _sapo(1.5, -1.0)[1] == pytest.approx(0.9341, abs=1e-4)
    # on-policy: f(1) = 2 / tau and the gradient equals the plain policy gradient
    loss, dloss_dr, _ = _sapo(1.0, -1.0)
    assert loss == pytest.approx(2 / 1.05) and dloss_dr == pytest.approx(1.0)


# ---------------------------------------------------------------- NGRPO asymmetric clipping
def _one_token(ratio, adv, name="grpo", **kw):
    old = torch.tensor([[-1.0]], dtype=torch.float64)
    logp = (old + math.log(ratio)).requires_grad_(True)
    loss, stats = losses.compute(name, logp, old, torch.tensor([adv], dtype=torch.float64),
                                 torch.ones(1, 1, dtype=torch.float64), **kw)
    loss.backward()
    return loss.item(), logp.grad.item(), stats


def test_grpo_sign_dependent_clip_ranges():
    # A > 0 uses eps_pos: r = 1.2 inside 1 + 0.24 (gradient r A = 1.2), outside 1 + 0.1 (clipped, no gradient)
    assert _one_token(1.2, 1.0, eps_pos=0.24, eps_neg=0.16)[:2] == pytest.approx((-1.2, -1.2))
    assert _one_token(1.2, 1.0, eps_pos=0.1, eps_neg=0.3)[:2] == pytest.approx((-1.1, 0.0))
    # A < 0 uses eps_neg: r = 0.8 below 1 - 0.16 -> clipped at 0.84; below 1 - 0.24 not clipped
    assert _one_token(0.8, -1.0, eps_pos=0.1, eps_neg=0.16)[:2] == pytest.approx((0.84, 0.0))
    assert _one_token(0.8, -1.0, eps_pos=0.1, eps_neg=0.24)[:2] == pytest.approx((0.8, 0.8))


def test_grpo_sign_clipping_equals_eps_high_low_pair():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(4, 5, generator=g, dtype=torch.float64)
    new = old + 0.4 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 0.5, -2.0], dtype=torch.float64)
    mask = torch.ones(4, 5, dtype=torch.float64)
    grads = []
    for params in ({"eps_pos": 0.24, "eps_neg": 0.16}, {"eps": 0.16, "eps_high": 0.24}):
        logp = new.clone().requires_grad_(True)
        losses.compute("grpo", logp, old, adv, mask, **params)[0].backward()
        grads.append(logp.grad)
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(ValueError, match="both"):
        losses.compute("grpo", new, old, adv, mask, eps_pos=0.2)


# ---------------------------------------------------------------- CISPO
def test_cispo_clips_the_weight_but_keeps_the_gradient():
    # r = 1.5 > 1.28: weight sg(1.28); loss = -1.28 * A * logp, logp = -1 + ln 1.5 = -0.59453
    loss, grad, stats = _one_token(1.5, 1.0, name="cispo", eps_high=0.28)
    assert loss == pytest.approx(-1.28 * (-1 + math.log(1.5)))
    assert grad == pytest.approx(-1.28)  # PPO-clip would give 0 here
    assert stats["loss/clip_frac"] == 1.0
    # inside the range the weight is r itself, so the gradient is r A (= PPO's)
    assert _one_token(1.1, -1.0, name="cispo")[1] == pytest.approx(1.1)


# ---------------------------------------------------------------- DisCO
def _disco(logp_values, adv, groups, old=None, **kw):
    logp = torch.tensor(logp_values, dtype=torch.float64)[:, None].requires_grad_(True)
    old_logp = logp.detach() if old is None else torch.tensor(old, dtype=torch.float64)[:, None]
    loss, stats = losses.compute("disco", logp, old_logp, torch.tensor(adv, dtype=torch.float64),
                                 torch.ones(len(adv), 1, dtype=torch.float64),
                                 group_ids=torch.tensor(groups), **kw)
    loss.backward()
    return loss.item(), logp.grad[:, 0].tolist(), stats


def test_disco_dro_weights_negatives_by_softmax():
    # group 0: positives s = [-1, -2], negatives s = [-1, -2]; group 1 all correct (A = 0): counts in N_q = 2
    logp, adv, groups = [-1.0, -2.0, -1.0, -2.0, -0.5, -0.5], [1, 1, -1, -1, 0, 0], [0, 0, 0, 0, 1, 1]
    loss, grad, _ = _disco(logp, adv, groups, tau=1.0)
    neg_term = math.log((math.exp(-1) + math.exp(-2)) / 2)
    assert loss == pytest.approx(-(-1.5 - neg_term) / 2)
    # d loss / d s: positives -1/2 each, negatives softmax([-1, -2]) = [.7311, .2689]; all / N_q = 2
    assert grad == pytest.approx([-0.25, -0.25, 0.7311 / 2, 0.2689 / 2, 0, 0], abs=1e-4)
    loss_b, grad_b, _ = _disco(logp, adv, groups, dro=False)
    assert loss_b == pytest.approx(0.0) and grad_b == pytest.approx([-0.25, -0.25, 0.25, 0.25, 0, 0])


def test_disco_squared_hinge_trust_region():
    # KL (token mean of old - new) = 3e-4 > delta 1e-4: coefficient beta (KL - delta) = 0.2
    logp = [-1.0, -2.0]
    old = [-1.0 + 3e-4, -2.0 + 3e-4]
    _, grad, stats = _disco(logp, [1, -1], [0, 0], old=old, dro=False)
    assert stats["disco/constraint_coef"].item() == pytest.approx(0.2)
    # objective gradient [-1, +1] plus the penalty's 0.2 * d(mean(old - new))/d new = -0.1 each
    assert grad == pytest.approx([-1.1, 0.9])
    _, grad, stats = _disco(logp, [1, -1], [0, 0], old=[-1.0 + 5e-5, -2.0 + 5e-5], dro=False)
    assert stats["disco/constraint_coef"].item() == 0.0 and grad == pytest.approx([-1.0, 1.0])


# ---------------------------------------------------------------- LLDS
def test_llds_penalises_only_falling_tokens_of_falling_responses():
    old = torch.tensor([[-1.0, -1.0]])
    mask = torch.ones(1, 2)
    penalty, active = losses.likelihood_displacement_penalty(torch.tensor([[-1.2, -0.9]]), old, mask, torch.tensor([1.0]))
    assert penalty.item() == pytest.approx(0.2) and active.item() == 1  # mean fell: only token 0 counts
    penalty, _ = losses.likelihood_displacement_penalty(torch.tensor([[-0.8, -1.1]]), old, mask, torch.tensor([1.0]))
    assert penalty.item() == 0.0  # mean rose
    penalty, _ = losses.likelihood_displacement_penalty(torch.tensor([[-1.2, -0.9]]), old, mask, torch.tensor([-1.0]))
    assert penalty.item() == 0.0  # negative advantage is not protected
    logp = torch.tensor([[-1.2, -0.9]], requires_grad=True)
    loss, stats = losses.compute("grpo", logp, old, torch.tensor([0.0]), mask, llds_coef=0.5)
    loss.backward()
    assert loss.item() == pytest.approx(0.1) and logp.grad.tolist() == [[-0.5, 0.0]]
    assert stats["llds/active_tokens"].item() == 1


def _reg_inputs(rho, lengths=(2, 2, 2)):
    """logp with the sequence log-ratios `rho` on the first token, old_logp 0, masks of `lengths`."""
    T = max(lengths)
    logp = torch.zeros(len(rho), T)
    logp[:, 0] = torch.tensor(rho)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    return logp.requires_grad_(True), torch.zeros_like(logp), mask


def test_reg_grpo_hand_computed():
    adv, groups = torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0, 0, 0])
    logp, old, mask = _reg_inputs([0.3, 0.0, -0.3])  # mean 0, std 0.3: predicted (1, 0, -1) = A
    loss, _ = losses.compute("reg_grpo", logp, old, adv, mask, group_ids=groups, aggregation="seq-mean-token-mean")
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    logp, old, mask = _reg_inputs([0.2, 0.0, -0.1])  # mean 1/30, std 0.15275: (1.0911, -0.2182, -0.8729)
    loss, stats = losses.compute("reg_grpo", logp, old, adv, mask, group_ids=groups, aggregation="seq-mean-token-mean")
    expected = ((1 - 1.0911) ** 2 + 0.2182 ** 2 + (-1 + 0.8729) ** 2) / 3
    assert loss.item() == pytest.approx(expected, abs=2e-4)
    assert stats["reg_grpo/guarded_frac"] == 0


def test_reg_grpo_first_inner_step_guard_gives_the_policy_gradient():
    """pi = pi_old: every rho is 0, std 0 -> replaced by 1; loss = mean A^2 and
    d loss / d logp_it = -(2/B) A_i on every real token, 0 on padding."""
    adv, groups = torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0, 0, 0])
    logp, old, mask = _reg_inputs([0.0, 0.0, 0.0], lengths=(2, 1, 2))
    loss, stats = losses.compute("reg_grpo", logp, old, adv, mask, group_ids=groups, aggregation="seq-mean-token-mean")
    assert loss.item() == pytest.approx(2 / 3) and stats["reg_grpo/guarded_frac"] == 1
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2 / 3, -2 / 3], [0.0, 0.0], [2 / 3, 2 / 3]]) * mask)
    assert torch.isfinite(logp.grad).all()


def test_reg_grpo_groups_are_normalised_separately_and_take_kl():
    adv, groups = torch.tensor([1.0, -1.0, 1.0, -1.0]), torch.tensor([0, 0, 1, 1])
    logp, old, mask = _reg_inputs([0.5, -0.5, 0.1, -0.1], lengths=(2, 2, 2, 2))
    loss, _ = losses.compute("reg_grpo", logp, old, adv, mask, group_ids=groups, aggregation="seq-mean-token-mean")
    # each group of two: unbiased std = |diff| / sqrt(2) -> predicted +-0.7071
    assert loss.item() == pytest.approx((1 - 0.70711) ** 2, abs=1e-5)
    ref = logp.detach() - 0.1
    with_kl, stats = losses.compute("reg_grpo", logp, old, adv, mask, ref_logp=ref, group_ids=groups,
                                    aggregation="seq-mean-token-mean", beta=0.1)
    assert with_kl.item() > loss.item() and stats["kl/mean"] > 0
    assert losses.LOSSES.get("reg_grpo").whole_groups


def test_gdpo_elbo_ratio_hand_computed():
    """Two sequences with ELBO terms summing to D = (0.4, -0.3) over 2 and 3 tokens, A = (1, -1), eps 0.2.
    Normalised in the exponent: r = (e^0.2, e^-0.1) = (1.2214, 0.9048): l1 = -min(1.2214, 1.2) = -1.2,
    l2 = -min(-0.9048, -0.9048) = 0.9048; mean -0.1476. Not normalised: r = (e^0.4, e^-0.3) =
    (1.4918, 0.7408): l1 = -1.2 / 2 = -0.6, l2 = -min(-0.7408, -0.8) / 3 = 0.8 / 3; mean -0.1667."""
    logp = torch.tensor([[0.3, 0.1, 0.0], [-0.1, -0.1, -0.1]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(2, 3, dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, stats = losses.compute("gdpo_elbo", logp, old, adv, mask, eps=0.2, aggregation="seq-mean-token-mean")
    assert loss.item() == pytest.approx((-1.2 + math.exp(-0.1)) / 2, abs=1e-6)
    loss.backward()  # sequence 1 is clipped (no gradient); sequence 2 is not: d/dlogp = (1/2) r2 / 3 per token
    assert logp.grad[0].abs().max() == 0
    assert logp.grad[1].tolist() == pytest.approx([math.exp(-0.1) / 6] * 3)
    raw, _ = losses.compute("gdpo_elbo", logp, old, adv, mask, eps=0.2, length_normalized=False,
                            aggregation="seq-mean-token-mean")
    assert raw.item() == pytest.approx((-0.6 + 0.8 / 3) / 2, abs=1e-6)


# ---------------------------------------------------------------- verl parity options
def test_dual_clip_bounds_the_loss_of_negative_advantages():
    """verl's dual clip, A = -2, c = 3, clip 0.2 / 0.28: r = 2 gives max(4, 2.56) = 4 < 6 (unchanged,
    gradient -A r = 4); r = 4 gives max(8, 2.56) = 8 > 6, so 6 with no gradient. Without c: 8, grad 8."""
    loss, grad, stats = _single(math.log(2.0), 0.0, -2.0, eps=0.2, eps_high=0.28, clip_ratio_c=3.0)
    assert loss == pytest.approx(4.0) and grad == pytest.approx(4.0) and stats["loss/clip_frac_dual"] == 0
    loss, grad, stats = _single(math.log(4.0), 0.0, -2.0, eps=0.2, eps_high=0.28, clip_ratio_c=3.0)
    assert loss == pytest.approx(6.0) and grad == 0.0 and stats["loss/clip_frac_dual"] == 1
    loss, grad, _ = _single(math.log(4.0), 0.0, -2.0, eps=0.2, eps_high=0.28)
    assert loss == pytest.approx(8.0) and grad == pytest.approx(8.0)
    loss, _, _ = _single(math.log(4.0), 0.0, 2.0, eps=0.2, clip_ratio_c=3.0)  # A > 0: only the usual clip
    assert loss == pytest.approx(-2.4)
    with pytest.raises(ValueError, match="clip_ratio_c"):
        _single(0.0, 0.0, 1.0, clip_ratio_c=0.9)


def test_log_ratio_clamp_stops_an_overflowing_ratio():
    """logp - old = 30 with A = -1: exp(30) = 1.07e13 unclamped; clamped at 20, exp(20) = 4.85e8 and no
    gradient. Below the clamp nothing changes (r = 1.3 as in the tests above)."""
    loss, grad, _ = _single(30.0, 0.0, -1.0)
    assert loss == pytest.approx(math.exp(20)) and grad == 0.0
    loss, grad, _ = _single(30.0, 0.0, -1.0, log_ratio_clamp=None)
    assert loss == pytest.approx(math.exp(30)) and grad == pytest.approx(math.exp(30))
    # GSPO clamps the mean log-ratio at 10 (verl)
    logp = torch.full((1, 2), 12.0, dtype=torch.float64)
    loss, _ = losses.compute("gspo", logp, torch.zeros_like(logp), torch.tensor([-1.0], dtype=torch.float64),
                             torch.ones(1, 2))
    assert loss.item() == pytest.approx(math.exp(10))


def test_kl_clamp_limits_each_estimate():
    """k3 at logp -4, ref -1: exp(3) - 3 - 1 = 16.09, clamped to 10 (verl's k3 clamp)."""
    logp, ref = torch.tensor([[-4.0]], dtype=torch.float64), torch.tensor([[-1.0]], dtype=torch.float64)
    args = (logp, logp, torch.zeros(1, dtype=torch.float64), torch.ones(1, 1))
    loss, stats = losses.compute("grpo", *args, ref_logp=ref, beta=1.0)
    assert loss.item() == pytest.approx(math.exp(3) - 4)
    loss, stats = losses.compute("grpo", *args, ref_logp=ref, beta=1.0, kl_clamp=10.0)
    assert loss.item() == pytest.approx(10.0) and stats["kl/mean"].item() == pytest.approx(10.0)


def test_token_weights_do_not_scale_the_kl_term_unless_asked():
    """Two tokens, policy term 0 (A = 0), k1 KL 0.1 each, beta 1, weights [1, 0] (entropy_topk keeps
    one token): token-mean (1 * 0.1 + 0.1) / 2 = 0.1, as TRL adds the KL after its mask; with
    weights_scale_kl (TW-GRPO's code) (0.1 + 0) / 2 = 0.05."""
    logp = torch.full((1, 2), -1.0, dtype=torch.float64)
    ref = torch.full((1, 2), -1.1, dtype=torch.float64)
    kw = dict(ref_logp=ref, beta=1.0, kl_estimator="k1", aggregation="token-mean",
              token_weights=torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    args = (logp, logp, torch.zeros(1, dtype=torch.float64), torch.ones(1, 2))
    assert losses.compute("grpo", *args, **kw)[0].item() == pytest.approx(0.1)
    assert losses.compute("grpo", *args, weights_scale_kl=True, **kw)[0].item() == pytest.approx(0.05)


def test_llds_divides_by_the_whole_batch_gate_count():
    """Review example: every token fell, two micro-batches of one response each. With the local count
    each half is a mean of its own tokens and the two add up to twice the whole-batch mean; with the
    whole batch's count (llds_tokens) the halves sum to the whole-batch penalty."""
    old = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, 0.0]])
    logp = torch.tensor([[-1.1, -1.2, -1.3], [-1.05, -1.25, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([1.0, 1.0])
    whole, active = losses.likelihood_displacement_penalty(logp, old, mask, adv)
    assert active.item() == 5 and whole.item() == pytest.approx((0.1 + 0.2 + 0.3 + 0.05 + 0.25) / 5)
    halves = [losses.likelihood_displacement_penalty(logp[i:i + 1], old[i:i + 1], mask[i:i + 1], adv[i:i + 1],
                                                     active_tokens=5)[0].item() for i in range(2)]
    assert sum(halves) == pytest.approx(whole.item())
    local = [losses.likelihood_displacement_penalty(logp[i:i + 1], old[i:i + 1], mask[i:i + 1], adv[i:i + 1])[0].item()
             for i in range(2)]
    assert sum(local) == pytest.approx(0.2 + 0.15)  # what a per-micro-batch mean gave


def test_sequence_level_losses_are_flagged():
    assert {n for n in LOSSES if getattr(LOSSES.get(n), "sequence_level", False)} == \
        {"gspo", "gdpo_elbo", "sapo", "reg_grpo"}


def test_gspo_ratio_mask_widens_the_mean():
    """IGPO's official scope: the sequence ratio averages over every canvas position, not only the
    loss tokens. logp - old = [.3, 0, -.3, .6], third token out of the loss: exp(.3) = 1.3499 over the
    loss tokens, exp(.15) = 1.1618 over all four (the dllm review's example)."""
    logp = torch.tensor([[0.3, 0.0, -0.3, 0.6]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    args = (logp, torch.zeros_like(logp), torch.tensor([1.0], dtype=torch.float64), mask)
    _, stats = losses.compute("gspo", *args, eps=10.0, eps_high=10.0)
    assert stats["loss/ratio_mean"].item() == pytest.approx(math.exp(0.3))
    _, stats = losses.compute("gspo", *args, ratio_mask=torch.ones(1, 4), eps=10.0, eps_high=10.0)
    assert stats["loss/ratio_mean"].item() == pytest.approx(math.exp(0.15)) and stats["loss/ratio_mean"].item() == pytest.approx(1.1618, abs=1e-4)
