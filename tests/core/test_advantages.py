import pytest
import torch

from mmrl.core import advantages
from mmrl.core.advantages import ADVANTAGES

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
    a = advantages.compute(name, r, g)
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
