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


# ---------------------------------------------------------------- the official parsers of the recipes
def test_tw_grpo_official_parsing_differs_where_the_review_found():
    """Gold "A,C". "(A)": official 0 (the item "(A)" is not "A"), lenient 0.5. Two answer tags A then B:
    official reads the first (A: 0.5), lenient the last (B: 0). "C, A" is 1 both ways."""
    fn = REWARDS.get("accuracy_choice_soft")
    gold = [{"answer": "A,C"}] * 4
    comps = ["<think>x</think><answer>(A)</answer>", "<answer>A</answer><answer>B</answer>",
             "<think>x</think><answer>C, A</answer>", "<think>x</think><answer>A,B</answer>"]
    assert fn(comps, gold, parse="official") == [0.0, 0.5, 1.0, 0.0]
    assert fn(comps, gold) == [0.5, 0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="params.parse"):
        fn(comps, gold, parse="strict")


def test_ton_official_accuracy_first_answer_exact_or_math_verify():
    """kokolerk/TON accuracy_reward: math-verify on the whole completion, else the first one-line
    <answer> equal to the gold exactly."""
    fn = REWARDS.get("accuracy_r1v")
    rows = [
        ({"answer": "3"}, "<think>count</think><answer>3</answer>", 1.0),
        ({"answer": "\\frac{1}{2}"}, "<answer>\\frac{2}{4}</answer>", 1.0),  # math-verify on the whole text
        ({"answer": "red"}, "<answer>red</answer><answer>blue</answer>", 1.0),  # the first answer
        ({"answer": "red"}, "<answer>Red</answer>", 0.0),  # exact: case matters (accuracy_task: 1)
        ({"answer": "cube"}, "<answer>\ncube</answer>", 0.0),  # the tag regex does not cross lines
    ]
    assert fn([c for _, c, _ in rows], [e for e, _, _ in rows]) == [s for _, _, s in rows]


def test_format_modes_strip_and_unique_tags():
    fn = REWARDS.get("format")
    ton = dict(pattern=r"<think>.*?</think>\s*<answer>.*?</answer>", strip=False)
    text = " <think></think><answer>1</answer>\n"  # leading space, trailing newline
    assert fn([text]) == [1.0]  # lenient: stripped
    assert fn([text], **ton) == [0.0]  # TON's code: the raw text must match whole
    tw = dict(pattern=r"<think>.*?</think>\s*<answer>.*?</answer>[\s!]*$", mode="search",
              unique_tags=["<think>", "<answer>"])
    assert fn(["Sure. <think>a</think> <answer>A</answer> !"], **tw) == [1.0]  # search: text before is fine
    assert fn(["<think>a</think><answer>A</answer><answer>B</answer>"], **tw) == [0.0]  # a second <answer>
    assert fn(["<think>a</think><answer>A</answer><answer>B</answer>"]) == [1.0]  # lenient accepts it
    with pytest.raises(ValueError, match="params.mode"):
        fn([text], mode="find")


def test_d1_and_igpo_reward_functions_by_hand():
    """d1's GSM8K set and IGPO's xmlcount on one well-formed and one sloppy completion."""
    good = "<reasoning>\n2 + 3 = 5\n</reasoning>\n<answer>\n5\n</answer>\n"
    sloppy = "<reasoning>2 + 3</reasoning> <answer>5 apples</answer> and more"
    examples = [{"answer": "5"}] * 2
    assert REWARDS.get("accuracy_xml_exact")([good, sloppy], examples) == [1.0, 0.0]
    assert REWARDS.get("answer_is_integer")([good, sloppy]) == [1.0, 0.0]
    # good: all four tags once; after "\n</answer>\n" nothing (0), after "\n</answer>" one "\n" (1 - 1 = 0)
    assert REWARDS.get("xmlcount_d1")([good, sloppy]) == pytest.approx([0.5, 0.0])
    tail = good + "xyz"  # 3 characters after the answer: 0.5 - 0.003 - 0.003
    assert REWARDS.get("xmlcount_d1")([tail]) == pytest.approx([0.494])
    assert REWARDS.get("format_strict_xml")([good, sloppy]) == [1.0, 0.0]
    assert REWARDS.get("format_soft_xml")([good, sloppy, " " + good]) == [1.0, 1.0, 0.0]  # re.match: from the start
    # IGPO: "<reasoning>\n", "</reasoning>", "<answer>\n", "</answer>" once each, + 0.25 for a \boxed{
    boxed = "<reasoning>\nx\n</reasoning>\n<answer>\n\\boxed{5}\n</answer>"
    assert REWARDS.get("xmlcount_igpo")([boxed, sloppy]) == pytest.approx([0.75, 0.25])

