import pytest

from mmrl.config import RewardConfig
from mmrl.rewards import REWARDS, score
from mmrl.rewards.math import accuracy_math, extract_answer
from mmrl.rewards.format import format_reward, overlong_penalty


@pytest.mark.parametrize("completion,gold,expected", [
    ("so the answer is \\boxed{1/2}", "0.5", 1.0),
    ("<answer>0.5</answer>", "\\frac{1}{2}", 1.0),
    ("<think>6*7</think><answer>42</answer>", "42", 1.0),
    ("<answer>41</answer>", "42", 0.0),
    ("the answer is 42", "42", 0.0),  # no tag, no box: no stated answer
    ("<answer>\\boxed{\\frac{\\pi}{2}}</answer>", "\\frac{\\pi}{2}", 1.0),
    ("\\boxed{(3, \\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
    ("<answer>1,000</answer>", "1000", 1.0),
    ("}{}{\\boxed{ <answer></answer> \x00 garbage", "3", 0.0),
])
def test_accuracy_math_on_real_strings(completion, gold, expected):
    assert accuracy_math([completion], [{"answer": gold}]) == [expected]


def test_extract_answer_prefers_last_tag_then_box():
    assert extract_answer("<answer>1</answer> then <answer>2</answer>") == "2"
    assert extract_answer("\\boxed{\\frac{1}{\\sqrt{2}}} text") == "\\frac{1}{\\sqrt{2}}"
    assert extract_answer("no answer here") is None


def test_format_reward_think_answer_and_custom_pattern():
    good = "<think>\nadd them\n</think>\n<answer>7</answer>"
    assert format_reward([good, "<answer>7</answer>", good + " trailing"]) == [1.0, 0.0, 0.0]
    assert format_reward(["<answer>7</answer>"], pattern=r"<answer>\d+</answer>") == [1.0]


def test_overlong_penalty_dapo_numbers():
    # L_max 20480, L_cache 4096: 18000 tokens -> (16384 - 18000) / 4096 = -0.3945
    vals = overlong_penalty(["x"] * 4, completion_lengths=[100, 16384, 18000, 20480],
                            max_length=20480, cache_length=4096)
    assert vals[:2] == [0.0, 0.0]
    assert vals[2] == pytest.approx(-0.39453125)
    assert vals[3] == -1.0


def test_a_raising_reward_scores_zero_for_that_sample_and_the_run_continues(caplog):
    @REWARDS.register("_test_flaky")
    def flaky(completions, examples, completion_lengths=None):
        return [1.0 / len(c) for c in completions]  # raises ZeroDivisionError on ''

    try:
        cfgs = [RewardConfig(name="_test_flaky"), RewardConfig(name="format", params={"pattern": "a+"})]
        rewards, names, errors = score(cfgs, ["ab", "", "aaaa"], [{}] * 3, [2, 0, 4])
    finally:
        del REWARDS["_test_flaky"]
    assert names == ["_test_flaky", "format"] and errors == 1
    assert rewards[:, 0].tolist() == [0.5, 0.0, 0.25]
    assert rewards[:, 1].tolist() == [0.0, 0.0, 1.0]
    assert "raised ZeroDivisionError" in caplog.text
