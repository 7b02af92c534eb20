import pytest
import torch

from mmrl.core import advantages
from mmrl.core.advantages import ADVANTAGES, SPOTracker

G1 = torch.tensor([0, 0, 0, 0])


def test_grpo_hand_computed_unbiased_std():
    # mean 0.5, unbiased std sqrt(1/3): 0.5 / 0.57735 = 0.8660 (population std would give 1.0)
    a = advantages.compute("grpo", torch.tensor([1.0, 0, 0, 1]), G1)
    torch.testing.assert_close(a, torch.tensor([0.8660, -0.8660, -0.8660, 0.8660]), atol=1e-4, rtol=0)
    # mean 0.25, unbiased std 0.5
    a = advantages.compute("grpo", torch.tensor([1.0, 0, 0, 0]), G1)
    torch.testing.assert_close(a, torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5, rtol=0)


def test_grpo_degenerate_and_singleton_groups_get_zero():
    r = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 7.0])
    g = torch.tensor([0, 0, 0, 1, 1, 2])
    a = advantages.compute("grpo", r, g)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a[:3], torch.zeros(3))
    torch.testing.assert_close(a[3:5], torch.tensor([0.7071, -0.7071]), atol=1e-4, rtol=0)
    assert a[5] == 0


def test_groups_are_independent_and_ids_need_not_be_sorted():
    r = torch.tensor([1.0, 5.0, 0.0, 3.0])
    g = torch.tensor([7, 2, 7, 2])
    a = advantages.compute("dr_grpo", r, g)
    torch.testing.assert_close(a, torch.tensor([0.5, 1.0, -0.5, -1.0]))


def test_dr_grpo_and_rloo_hand_computed():
    r = torch.tensor([1.0, 0, 0, 1])
    torch.testing.assert_close(advantages.compute("dr_grpo", r, G1), torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # r_i - mean of the other three: 1 - 1/3, 0 - 2/3
    torch.testing.assert_close(advantages.compute("rloo", r, G1),
                               torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]), atol=1e-6, rtol=0)
    assert advantages.compute("rloo", torch.tensor([3.0]), torch.tensor([0])).item() == 0


def test_multi_reward_columns_are_weighted_before_normalisation():
    rewards = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    # weighted sums [1.5, 1, 0, 0]: mean 0.625
    a = advantages.compute("dr_grpo", rewards, G1, reward_weights=[1.0, 0.5])
    torch.testing.assert_close(a, torch.tensor([0.875, 0.375, -0.625, -0.625]))
    with pytest.raises(ValueError, match="reward_weights"):
        advantages.compute("grpo", rewards, G1, reward_weights=[1.0])


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError, match="valid: .*grpo"):
        advantages.compute("nope", torch.zeros(4), G1)


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_every_registered_estimator_runs_through_compute(name):
    r = torch.tensor([1.0, 0, 0, 1, 0.5, 0.5, 0, 1])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    a = advantages.compute(name, r, g, state=advantages.make_state(name), example_index=g)
    assert a.shape == (8,) and torch.isfinite(a).all()


@pytest.mark.parametrize("rewards,expected", [
    ([1.0, 0, 0, 1], [0.7303, -1.0954, -1.0954, 0.7303]),  # R' = [1,0,0,1,1]: mean 0.6, std_u 0.5477
    ([0.0, 0, 0, 0], [-0.4472] * 4),                       # all wrong: negative, not 0
    ([0.0] * 8, [-0.3333] * 8),
    ([1.0, 1, 1, 1], [0.0] * 4),                           # all correct: still 0
])
def test_ngrpo_virtual_max_reward_sample(rewards, expected):
    r = torch.tensor(rewards)
    a = advantages.compute("ngrpo", r, torch.zeros(len(r), dtype=torch.long))
    torch.testing.assert_close(a, torch.tensor(expected), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- GDPO
def test_gdpo_normalises_each_reward_before_summing():
    rewards = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    # columns: [.866,.866,-.866,-.866] and [1.5,-.5,-.5,-.5]; sum [2.366,.366,-1.366,-1.366],
    # batch z-score (std_u 1.7763) -> [1.3320, 0.2061, -0.7691, -0.7691]
    a = advantages.compute("gdpo", rewards, G1)
    torch.testing.assert_close(a, torch.tensor([1.3320, 0.2061, -0.7691, -0.7691]), atol=1e-4, rtol=0)
    grpo = advantages.compute("grpo", rewards, G1)  # sum first: [2,1,0,0] -> differs
    assert not torch.allclose(a, grpo, atol=1e-3)
    # weights scale the column advantages before the batch step: w=[1,0] gives column 1 alone, z-scored
    a = advantages.compute("gdpo", rewards, G1, reward_weights=[1.0, 0.0])
    torch.testing.assert_close(a, torch.tensor([0.8660, 0.8660, -0.8660, -0.8660]), atol=1e-3, rtol=0)


def test_gdpo_batch_step_spans_groups():
    rewards = torch.tensor([[1.0], [0.0], [1.0], [1.0]])
    g = torch.tensor([0, 0, 1, 1])
    # group step: [.7071,-.7071, 0, 0]; batch z-score: mean 0, std_u sqrt(1/3) -> x 1.7321
    a = advantages.compute("gdpo", rewards, g)
    torch.testing.assert_close(a, torch.tensor([1.2247, -1.2247, 0.0, 0.0]), atol=1e-3, rtol=0)


# ---------------------------------------------------------------- DGPO
def test_dgpo_mean_absolute_deviation_and_question_weights():
    r = torch.tensor([1.0, 0, 0, 1, 1, 0, 0, 0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    plain = advantages.compute("dgpo", r, g, question_weighting=False)
    # group 1: MAD 0.5 -> +-1 (grpo: +-0.866); group 2: mean .25, MAD .375 -> [2, -2/3, -2/3, -2/3]
    torch.testing.assert_close(plain, torch.tensor([1.0, -1, -1, 1, 2, -2 / 3, -2 / 3, -2 / 3]), atol=1e-3, rtol=0)
    # DQW: acc [0.5, 0.25], T=2: 2 softmax([-0.25, -0.125]) = [0.9376, 1.0624]
    weighted = advantages.compute("dgpo", r, g)
    torch.testing.assert_close(weighted[:4] / plain[:4], torch.full((4,), 0.9376), atol=1e-4, rtol=0)
    torch.testing.assert_close(weighted[4:] / plain[4:], torch.full((4,), 1.0624), atol=1e-4, rtol=0)


def test_dgpo_question_weights_use_the_accuracy_column_and_skip_degenerate_groups():
    # column 0 is accuracy, column 1 a format reward; group 2 is degenerate (weight 1, advantage 0)
    rewards = torch.tensor([[1.0, 1], [0, 1], [0, 1], [0, 0], [1, 1], [1, 1]])
    g = torch.tensor([0, 0, 1, 1, 2, 2])
    a = advantages.compute("dgpo", rewards, g, reward_weights=[1.0, 1.0])
    # group 0: acc .5; group 1: acc 0 but total spread > 0 -> treated as acc 1 (lowest weight)
    w0 = 2 * torch.softmax(torch.tensor([-0.25, -0.5]), 0)
    torch.testing.assert_close(a[:2], torch.tensor([1.0, -1.0]) * w0[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(a[2:4], torch.tensor([1.0, -1.0]) * w0[1], atol=1e-3, rtol=0)
    assert torch.equal(a[4:], torch.zeros(2))


# ---------------------------------------------------------------- BNPO
def test_bnpo_beta_fit_and_hand_computed_advantages():
    r = torch.tensor([1.0, 0, 0, 1, 1, 0, 0, 0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    state = advantages.make_state("bnpo")
    a = advantages.compute("bnpo", r, g, state=state)
    # p = [.5, .25]: mu .375, var_u .03125 -> alpha 1.8125, beta 2.3542;
    # f(.5) = 1.4669 -> +-.5/1.4669; f(.25) = 1.4464 -> [.75, -.25, ...] / 1.4464
    assert state.last_fit[0] == pytest.approx([1.8125, 2.3541667], abs=1e-5)
    expected = torch.tensor([0.3409, -0.3409, -0.3409, 0.3409, 0.5185, -0.1728, -0.1728, -0.1728])
    torch.testing.assert_close(a, expected, atol=1e-4, rtol=0)


def test_bnpo_single_prompt_is_reinforce_and_momentum_smooths_the_fit():
    state = advantages.make_state("bnpo")
    a = advantages.compute("bnpo", torch.tensor([1.0, 0, 0, 0]), G1, state=state)
    torch.testing.assert_close(a, torch.tensor([0.75, -0.25, -0.25, -0.25]))  # alpha = beta = 1
    state = advantages.make_state("bnpo")
    g = torch.tensor([0, 0, 1, 1])
    advantages.compute("bnpo", torch.tensor([1.0, 0, 0, 0]), g, state=state, momentum=0.5)  # p = [.5, 0]
    advantages.compute("bnpo", torch.tensor([1.0, 1, 1, 0]), g, state=state, momentum=0.5)  # p = [1, .5]
    # mu: .5 (.25 then .75 -> EMA .5); var_u .125 both times
    assert state.moments[0] == pytest.approx([0.5, 0.125])
    with pytest.raises(ValueError, match="stateful"):
        advantages.compute("bnpo", torch.tensor([1.0, 0, 0, 0]), G1)


def test_bnpo_decomposition_averages_per_reward_advantages():
    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    st = advantages.make_state("bnpo")
    a = advantages.compute("bnpo", rewards, G1, state=st, decompose=True)
    col0 = advantages.compute("bnpo", rewards[:, 0], G1, state=advantages.make_state("bnpo"))
    col1 = advantages.compute("bnpo", rewards[:, 1], G1, state=advantages.make_state("bnpo"))
    torch.testing.assert_close(a, (col0 + col1) / 2)


# ---------------------------------------------------------------- SPO
def test_spo_tracker_initialisation_update_and_forgetting():
    tracker = advantages.make_state("spo")
    tracker.initialize(7, successes=4, samples=8)  # N_init 8: alpha = beta = 8 * 4.5 / 9 = 4
    assert (tracker.alpha[7], tracker.beta[7]) == (4.0, 4.0)
    a = advantages.compute("spo", torch.tensor([1.0, 0.0]), torch.tensor([0, 1]), state=tracker,
                           example_index=torch.tensor([7, 9]))
    # raw [1 - .5, 0 - .5] -> batch z-score (std_u .7071) [.7071, -.7071]
    torch.testing.assert_close(a, torch.tensor([0.7071, -0.7071]), atol=1e-4, rtol=0)
    # first visit: D = 0 -> rho = 0.96: alpha = .96 * 4 + 1 = 4.84, beta = 3.84
    assert tracker.alpha[7] == pytest.approx(4.84) and tracker.beta[7] == pytest.approx(3.84)
    assert tracker.value(7) == pytest.approx(0.5576, abs=1e-4)
    assert SPOTracker.forgetting(0.03) == 0.875  # 2^-0.5 = .7071 clipped up to rho_min
    assert SPOTracker.forgetting(0.003) == 0.96  # 2^-0.05 = .966 clipped down to rho_max
    assert SPOTracker.forgetting(0.006) == pytest.approx(2 ** -0.1)
    before = tracker.alpha[9]
    advantages.compute("spo", torch.tensor([1.0]), torch.tensor([0]), state=tracker,
                       example_index=torch.tensor([9]), divergence={9: 0.006})
    assert tracker.alpha[9] == pytest.approx(2 ** -0.1 * before + 1)


def test_spo_baseline_uses_reward_range_and_constant_rho():
    tracker = advantages.make_state("spo")
    # r_max 2: p_hat .5 -> baseline 1.0; R' = R / 2
    advantages.compute("spo", torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0, 1, 2]), state=tracker,
                       example_index=torch.tensor([0, 1, 2]), r_max=2.0, rho="constant")
    assert tracker.alpha[0] == pytest.approx(0.875 * 0.5 + 1) and tracker.beta[2] == pytest.approx(0.875 * 0.5 + 0.5)
