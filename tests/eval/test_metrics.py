import math

import pytest

from mmrl.eval.metrics import majority_at_k, mean_at_k, pass_at_k
from mmrl.rewards.math import same_answer


def exact(a, b):
    return a == b


def test_pass_at_k_hand_computed():
    # 1 - C(n-c, k) / C(n, k)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # k = 1 is c / n
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # fewer than k wrong samples: any k contain a right one
    assert pass_at_k(200, 17, 100) == pytest.approx(1 - math.comb(183, 100) / math.comb(200, 100))


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError, match="num_samples"):
        pass_at_k(2, 1, 4)


def test_mean_at_k_uses_first_k_samples():
    assert mean_at_k([True, False, True, True], 2) == 0.5
    assert mean_at_k([True, False, True, True], 4) == 0.75


def test_majority_at_k_plain_and_prefix():
    answers = ["3", "4", "4", "3", "3"]
    correct = [True, False, False, True, True]
    assert majority_at_k(answers, correct, 5, exact) == 1.0  # 3 votes for "3"
    assert majority_at_k(answers, correct, 3, exact) == 0.0  # first 3: "4" has 2 votes


def test_majority_at_k_tie_scores_expected_value():
    answers = ["3", "4", "3", "4"]
    correct = [True, False, True, False]
    assert majority_at_k(answers, correct, 4, exact) == 0.5  # right and wrong tie at 2 votes
    assert majority_at_k(["1", "2", "3"], [False, True, False], 3, exact) == pytest.approx(1 / 3)
    # a three-way tie is decided by count, not by which answer came first
    assert majority_at_k(["2", "1", "3"], [True, False, False], 3, exact) == pytest.approx(1 / 3)


def test_majority_at_k_ignores_missing_answers():
    assert majority_at_k([None, None, "5"], [False, False, True], 3, exact) == 1.0
    assert majority_at_k([None, None], [False, False], 2, exact) == 0.0


def test_majority_at_k_pools_equivalent_answers():
    # 0.5 and 1/2 are one answer with two votes, beating "2" (math-verify equivalence)
    answers = ["0.5", "2", "\\frac{1}{2}"]
    correct = [True, False, True]
    assert majority_at_k(answers, correct, 3, same_answer) == 1.0
    assert majority_at_k(answers, correct, 3, exact) == pytest.approx(2 / 3)  # unpooled: 3-way tie, 2 right
