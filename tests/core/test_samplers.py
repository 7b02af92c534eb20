import math

import pytest
import torch

from mmrl.core import samplers
from mmrl.core.advantages import SPOTracker
from mmrl.core.samplers import knapsack_allocate, knapsack_value


def _roundtrip(sampler, n=3, steps=2):
    """Draws after load_state_dict equal the draws the original makes."""
    state = sampler.state_dict()
    first = [sampler.sample(n) for _ in range(steps)]
    sampler.load_state_dict(state)
    return first, [sampler.sample(n) for _ in range(steps)]


def test_uniform_epochs_cover_every_prompt_and_resume():
    s = samplers.build("uniform", 5, seed=1)
    drawn = s.sample(5)
    assert sorted(drawn) == [0, 1, 2, 3, 4] and s.epoch == 1
    a, b = _roundtrip(s)
    assert a == b


def test_vade_posterior_update_two_scale_decay():
    s = samplers.build("vade", 4, params={"decay_selected": 0.2, "decay_unselected": 0.999})
    s.alpha[:] = [1.0, 2.0, 3.0, 4.0]
    s.beta[:] = [1.0, 1.0, 1.0, 1.0]
    s.update([0, 2], [[1, 0, 0, 1, 1, 0, 0, 0], [1] * 8])
    # selected: alpha = .2 alpha + r, beta = .2 beta + G - r; unselected: x .999
    assert s.alpha.tolist() == pytest.approx([0.2 + 3, 2 * 0.999, 0.6 + 8, 4 * 0.999])
    assert s.beta.tolist() == pytest.approx([0.2 + 5, 0.999, 0.2 + 0, 0.999])


def test_vade_prefers_the_information_peak():
    s = samplers.build("vade", 3, seed=0)
    # near-certain posteriors: p ~ 1/3, 1/2 and 0.9
    s.alpha[:] = [1e6, 1e6, 9e6]
    s.beta[:] = [2e6, 1e6, 1e6]
    assert s.sample(1) == [0]  # p (1 - p)^2 peaks at 1/3: 0.148 > 0.125 (p = .5)
    v = samplers.build("vade", 3, seed=0, params={"objective": "variance"})
    v.alpha[:], v.beta[:] = s.alpha, s.beta
    assert v.sample(1) == [1]  # p (1 - p) peaks at 1/2
    a, b = _roundtrip(samplers.build("vade", 10, seed=3))
    assert a == b and len(set(a[0])) == 3


def test_spo_priority_weights_and_draws():
    tracker = SPOTracker()
    tracker.alpha[0], tracker.beta[0] = 1e-6, 10.0  # p ~ 0
    s = samplers.build("spo_priority", 3, seed=0, tracker=tracker)
    # w = sqrt(p (1 - p)) + 0.05: unseen prompts p = .5 -> .55, prompt 0 -> ~0.05
    assert s.weights([0, 1, 2]).tolist() == pytest.approx([0.05, 0.55, 0.55], abs=1e-3)
    counts = torch.zeros(3)
    for _ in range(300):
        for i in s.sample(1):
            counts[i] += 1
    assert counts[0] < 30 and counts[1] > 100 and counts[2] > 100  # 0.05 / 1.15 = 4% expected
    assert len(set(s.sample(3))) == 3  # without replacement
    a, b = _roundtrip(s)
    assert a == b
    with pytest.raises(ValueError, match="advantage: spo"):
        samplers.build("spo_priority", 3)


def test_knapsack_value_and_dynamic_program():
    assert [round(knapsack_value(n, 0.5), 4) for n in (2, 4, 6, 8)] == [0.0625, 0.1094, 0.1211, 0.124]
    # p = [.5, .1], min 2 each, 8 in total: [5, 3] (value .1391) beats the even split [4, 4] (.1372)
    assert knapsack_allocate([0.5, 0.1], 8, 2, 128) == [5, 3]
    v = knapsack_value(5, 0.5) + knapsack_value(3, 0.1)
    assert v == pytest.approx(0.1391, abs=1e-4) and v > knapsack_value(4, 0.5) + knapsack_value(4, 0.1)
    assert knapsack_allocate([0.5, 0.5], 8, 2, 3) == [3, 3]  # capped at max_n
    with pytest.raises(ValueError, match="budget"):
        knapsack_allocate([0.5] * 3, 5, 2, 8)


def test_knapsack_group_sizes_rules():
    s = samplers.build("knapsack", 10, params={"min_history": 2, "max_n": 16})
    s.update([0, 1, 2, 3], [[1, 0], [0, 0], [1, 1], [1, 0, 0, 0]])
    # 0: p .5, 1: p 0 -> 2, 2: p 1 -> 2, 3: p .25, 4: no history -> group_size
    sizes = s.group_sizes([0, 1, 2, 3, 4], 4)
    assert sizes[1:3] == [2, 2] and sizes[4] == 4 and sum(sizes) == 20
    # effective prompts share 20 - 8 = 12 by the knapsack (their needs, 4 + 9, exceed it)
    assert sizes[0] + sizes[3] == 12
    assert sizes[0:1] + sizes[3:4] == knapsack_allocate([0.5, 0.25], 12, 2, 16)
    # enough budget: effective prompts get what they need (p = .5 -> ceil(log .1 / log .5) = 4),
    # the excess goes round-robin to the p = 0 prompt
    s2 = samplers.build("knapsack", 10, params={"min_history": 2, "max_n": 16})
    s2.update([0, 1], [[1, 0], [0, 0]])
    assert s2.group_sizes([0, 1], 8) == [4, 12]
    # the buffer keeps the last `buffer` outcomes
    s3 = samplers.build("knapsack", 2, params={"buffer": 3})
    s3.update([0], [[1, 1, 1, 1]])
    s3.update([0], [[0]])
    assert s3.history[0] == [1, 1, 0]
    restored = samplers.build("knapsack", 10, params={"min_history": 2, "max_n": 16})
    restored.load_state_dict(s.state_dict())
    assert restored.group_sizes([0, 1, 2, 3, 4], 4) == sizes


def test_dynamic_filter_flags_refill_and_checks_rounds():
    s = samplers.build("dynamic_filter", 4, params={"max_rounds": 3})
    assert s.refill and s.max_rounds == 3 and not samplers.build("uniform", 4).refill
    with pytest.raises(ValueError, match="max_rounds"):
        samplers.build("dynamic_filter", 4, params={"max_rounds": 0})
    assert math.isclose(sum(samplers.build("uniform", 4).group_sizes([0, 1], 8)), 16)


def test_sentence_bleu_hand_computed():
    from mmrl.core.diversity import distinct_n, self_bleu, sentence_bleu

    assert sentence_bleu([1, 2, 3], [[1, 2, 3]]) == pytest.approx(1.0)
    # unigrams 3/4, bigrams 1/3, trigrams 0 -> smoothed 0.1/2; equal lengths: no brevity penalty
    assert sentence_bleu([1, 2, 3, 4], [[1, 2, 5, 4]]) == pytest.approx((0.75 * (1 / 3) * 0.05) ** (1 / 3))
    # brevity penalty exp(1 - 4/3) against the closest reference length 4
    assert sentence_bleu([1, 2, 3], [[1, 2, 3, 4]]) == pytest.approx(math.exp(1 - 4 / 3))
    assert self_bleu([[1, 2, 3], [1, 2, 3]]) == pytest.approx(1.0)
    assert distinct_n([[1, 2, 3, 4], [1, 2, 3, 5]], 3) == pytest.approx(3 / 4)


def test_vas_scores_weights_and_mixed_draws():
    from mmrl.core.samplers import build

    vas = build("vas", 4, seed=0, params={"mix": 0.5, "alpha": 0.8, "beta": 0.2})
    same = [[5, 6, 7]] * 4
    vas.update([0], [[1, 0, 1, 0]], completions=[same])  # OVS 0.25, TDS 1 - 1 = 0 -> 0.2
    assert vas.vps[0] == pytest.approx(0.2)
    # OVS 0; BLEUs (1/3 * 0.05 * 0.1)^(1/3) for the first three, (1 * 0.05 * 0.1)^(1/3) for [1, 5, 9]
    vas.update([1], [[1, 1, 1, 1]], completions=[[[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 5, 9]]])
    bleus = [(1 / 3 * 0.05 * 0.1) ** (1 / 3)] * 3 + [(0.05 * 0.1) ** (1 / 3)]
    assert vas.vps[1] == pytest.approx(0.2 * (1 - sum(bleus) / 4))
    vas.vps[:] = [0.1, 0.1, 0.1, 0.5]  # only prompt 3 has weight after min-max normalisation
    vas.scored[:] = True
    assert vas.weights().tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0])
    drawn = vas.sample(4)
    assert drawn.count(3) >= 2 and vas.last_weighted == 2  # floor(0.5 * 4) weighted draws, all prompt 3
    state = vas.state_dict()
    again = build("vas", 4, seed=0, params={"mix": 0.5})
    again.load_state_dict(state)
    assert again.sample(4) == vas.sample(4)
    with pytest.raises(ValueError, match="completions"):
        vas.update([0], [[1.0]])


def test_vas_unscored_prompts_take_the_mean_score_not_the_maximum():
    """Prompts 0 and 1 scored (VPS 0.2 and 0.0), 2 and 3 never: with `unscored: mean` they count with
    0.1 (weights [1, 0, .5, .5]); with `unscored: max` they keep the initial 0.8 * 0.25 + 0.2 = 0.4,
    the highest VPS, and take all the weight; before any score the weights are uniform."""
    from mmrl.core.samplers import build

    same = [[5, 6, 7]] * 4
    for unscored, expected in (("mean", [1.0, 0.0, 0.5, 0.5]), ("max", [0.5, 0.0, 1.0, 1.0])):
        vas = build("vas", 4, seed=0, params={"unscored": unscored})
        if unscored == "mean":
            assert vas.weights().tolist() == [0.0] * 4 and vas.metrics()["vas/scored_fraction"] == 0
        vas.update([0, 1], [[1, 0, 1, 0], [1, 1]], completions=[same, [[1, 2, 3]] * 2])  # 0.2, 0.0
        assert vas.vps[:2].tolist() == pytest.approx([0.2, 0.0])
        assert vas.weights().tolist() == pytest.approx(expected, abs=1e-6)
    assert vas.metrics()["vas/scored_fraction"] == 0.5


def test_self_bleu_edge_cases_equal_nltk():
    """nltk 3.10.4 sentence_bleu, weights (1/3, 1/3, 1/3), SmoothingFunction().method1:
    [1, 2] vs [[1, 2, 3]]: precisions 2/2, 1/1 and no trigram (0/1 smoothed to 0.1/1), brevity
    exp(1 - 3/2): 0.1^(1/3) exp(-0.5) = 0.28153 (not 0). [7, 8, 9] vs [[1, 2, 3]]: no unigram in
    common, and nltk returns 0 before smoothing (not 0.1^(1/3) 0.05^(1/3) 0.1^(1/3) = 0.0550)."""
    from mmrl.core.diversity import sentence_bleu

    assert sentence_bleu([1, 2], [[1, 2, 3]]) == pytest.approx(0.1 ** (1 / 3) * math.exp(-0.5))
    assert sentence_bleu([1, 2], [[1, 2, 3]]) == pytest.approx(0.28153, abs=1e-5)
    assert sentence_bleu([7, 8, 9], [[1, 2, 3]]) == 0.0
    assert sentence_bleu([1, 2, 3, 4], [[1, 2, 3, 5]]) == pytest.approx(0.62996, abs=1e-5)
