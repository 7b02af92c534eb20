import pytest

from mmrl.core.sft import thought_dropout
from mmrl.rewards import REWARDS
from mmrl.rewards.choice import choice_letters, same_task_answer


@pytest.mark.parametrize("text, letters", [
    ("B", {"B"}), ("(B)", {"B"}), ("B. blue", {"B"}), ("A, C", {"A", "C"}), ("A,C", {"A", "C"}),
    ("blue", set()), ("42", set()), ("A, blue", set()),
])
def test_choice_letters(text, letters):
    assert choice_letters(text) == letters


def test_accuracy_task_checks_by_kind_of_task():
    fn = REWARDS.get("accuracy_task")
    rows = [
        ({"answer": "B", "options": ["red", "blue"]}, "<answer>(B) blue</answer>", 1.0),
        ({"answer": "B", "options": ["red", "blue"]}, "<answer>A</answer>", 0.0),
        ({"answer": "0.5"}, "<answer>\\frac{1}{2}</answer>", 1.0),     # math-verify
        ({"answer": "Red"}, "<answer>red.</answer>", 1.0),              # words: case, punctuation
        ({"answer": "red"}, "<answer>reddish</answer>", 0.0),
        ({"answer": "red"}, "no tags at all", 0.0),
    ]
    assert fn([c for _, c, _ in rows], [e for e, _, _ in rows]) == [s for _, _, s in rows]


def test_soft_multi_choice_reward_partial_credit():
    """TW-GRPO Eq. 7: |P|/|G| when P is inside G, else 0."""
    fn = REWARDS.get("accuracy_choice_soft")
    gold = [{"answer": "A,C,D"}] * 5
    comps = ["<answer>A,C,D</answer>", "<answer>A, C</answer>", "<answer>D</answer>",
             "<answer>A,B</answer>", "<answer></answer>"]
    assert fn(comps, gold) == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0, 0.0])


def test_same_task_answer_for_majority_votes():
    assert same_task_answer("B", "(B)") and not same_task_answer("B", "C")
    assert same_task_answer("Red", "red") and same_task_answer("0.5", "\\frac{1}{2}")


def test_empty_think_metric_reward():
    fn = REWARDS.get("empty_think")
    comps = ["<think>\n\n</think><answer>1</answer>", "<think>count 1</think><answer>1</answer>",
             "<answer>1</answer>", "<think> </think>"]
    assert fn(comps) == [1.0, 0.0, 0.0, 1.0]


def test_thought_dropout_empties_the_think_with_probability_p():
    target = "<think>the square is red</think><answer>red</answer>"
    assert thought_dropout([target], 1.0, seed=0) == ["<think>\n\n</think><answer>red</answer>"]
    assert thought_dropout([target], 0.0, seed=0) == [target]
    out = thought_dropout([target] * 2000, 0.5, seed=0)
    assert 0.45 < sum(t.startswith("<think>\n\n") for t in out) / 2000 < 0.55
    assert out == thought_dropout([target] * 2000, 0.5, seed=0)  # decided once, reproducibly
    assert thought_dropout(["<answer>red</answer>"], 1.0, seed=0) == ["<answer>red</answer>"]
    with pytest.raises(ValueError, match="thought_dropout"):
        thought_dropout([target], 1.5, seed=0)
