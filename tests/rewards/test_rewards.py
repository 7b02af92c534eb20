import pytest
import torch

from mmrl.config import RewardConfig
from mmrl.rewards import REWARDS, score
from mmrl.rewards.registry import REWARD_ARGS
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


@pytest.fixture
def flaky_reward():
    """A reward that raises on '' and returns NaN on 'nan', registered for one test."""
    @REWARDS.register("_test_flaky")
    def flaky(completions, examples, completion_lengths=None):
        return [float("nan") if c == "nan" else 1.0 / len(c) for c in completions]  # '' -> ZeroDivisionError
    yield "_test_flaky"
    del REWARDS["_test_flaky"]


@pytest.mark.parametrize("on_error", ["drop", "zero"])
def test_a_failing_reward_is_counted_once_per_call_and_scores_zero(flaky_reward, on_error, caplog):
    cfgs = [RewardConfig(name=flaky_reward, on_error=on_error), RewardConfig(name="format", params={"pattern": "a+"})]
    rewards, names, errors, failed = score(cfgs, ["ab", "", "aaaa", "nan"], [{}] * 4, [2, 0, 4, 3])
    assert names == ["_test_flaky", "format"] and errors == {"_test_flaky": 2, "format": 0}
    assert rewards[:, 0].tolist() == [0.5, 0.0, 0.25, 0.0] and torch.isfinite(rewards).all()
    assert rewards[:, 1].tolist() == [0.0, 0.0, 1.0, 0.0]
    # drop marks the failed rows (the trainer leaves their groups out); zero trains on the 0
    assert failed.tolist() == ([False, True, False, True] if on_error == "drop" else [False] * 4)
    warnings = [r for r in caplog.records if "failed on 2 of 4 samples" in r.message]
    assert len(warnings) == 1 and "ZeroDivisionError" in warnings[0].message


def test_a_failing_reward_with_on_error_raise_stops(flaky_reward):
    with pytest.raises(RuntimeError, match="'_test_flaky' failed on 1 of 2 samples.*on_error"):
        score([RewardConfig(name=flaky_reward, on_error="raise")], ["ab", ""], [{}] * 2, [2, 0])


def test_a_custom_reward_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def shortness(completions, examples=None, completion_lengths=None, scale=1.0):\n"
        "    return [scale / (1 + n) for n in completion_lengths]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = RewardConfig(name="my_rewards:shortness", params={"scale": 2.0})
    REWARDS.check_params(cfg.name, cfg.params, "rewards.0.params", skip=REWARD_ARGS)
    with pytest.raises(ValueError, match="rewards.0.params.scal: .*valid: \\['scale'\\]"):
        REWARDS.check_params(cfg.name, {"scal": 1}, "rewards.0.params", skip=REWARD_ARGS)
    rewards, names, _, _ = score([cfg], ["a", "abc"], [{}, {}], [1, 3])
    assert names == ["my_rewards:shortness"] and rewards[:, 0].tolist() == [1.0, 0.5]
    with pytest.raises(KeyError, match="'my_rewards:nope': cannot import it \\(AttributeError"):
        REWARDS.get("my_rewards:nope")
    with pytest.raises(KeyError, match="'not_a_module_xyz:f': cannot import it \\(ModuleNotFoundError"):
        REWARDS.get("not_a_module_xyz:f")
