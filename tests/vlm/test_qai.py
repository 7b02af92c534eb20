import random

import pytest

from mmrl.vlm.qai import invert, invert_some, negate_question

ROW = {"question": "What did the man pick up?", "options": ["cup", "ball", "book", "pen"], "answer": "B",
       "solution": "<think>he picks the ball</think><answer>B</answer>"}


@pytest.mark.parametrize("question, negated", [
    ("Why did the boy run?", "why didn't the boy run?"),
    ("What will the person do next?", "what won't the person do next?"),
    ("What happened after the door opened?", "what didn't happen after the door opened?"),
    ("Is the cube red?", None),  # 'Is' is the first word, not the second: no rule fires
    ("Which colour is the square?", None),  # second word is not an auxiliary
    ("What is the colour of the square?", "what isn't the colour of the square?"),
])
def test_negation_rules(question, negated):
    assert negate_question(question) == negated


def test_inversion_makes_the_wrong_options_the_answers():
    for seed in range(50):
        out = invert(ROW, random.Random(seed))
        assert out["question"] == "what didn't the man pick up?" and out["qa_inverted"]
        letters = out["answer"].split(",")
        chosen = {out["options"]["ABCD".index(x)] for x in letters}
        assert "ball" in out["options"] and "ball" not in chosen  # the old answer is the one wrong option
        assert 1 <= len(letters) <= 3 and len(out["options"]) == len(letters) + 1  # k ~ U{1..n-1}
        assert chosen <= {"cup", "book", "pen"}
        assert out["solution"] == f"<answer>{out['answer']}</answer>"
    sizes = {len(invert(ROW, random.Random(s))["options"]) for s in range(50)}
    assert sizes == {2, 3, 4}  # k = 1, 2 or 3 of the 3 wrong options kept, plus the old answer
    assert ROW["answer"] == "B"  # the input row is not modified


def test_rows_that_cannot_be_inverted_are_kept():
    rng = random.Random(0)
    assert invert({**ROW, "question": "Is it red?"}, rng) == {**ROW, "question": "Is it red?"}  # no rule
    assert invert({**ROW, "options": ["a"], "answer": "A"}, rng)["answer"] == "A"  # one option: nothing to invert
    assert invert({**ROW, "answer": "A,C"}, rng)["answer"] == "A,C"  # already multi-choice


def test_invert_some_probability_and_reproducibility():
    rows = [dict(ROW) for _ in range(400)]
    out = invert_some(rows, 0.5, seed=1)
    share = sum(r.get("qa_inverted", False) for r in out) / len(out)
    assert 0.43 < share < 0.57 and out == invert_some(rows, 0.5, seed=1)
    assert invert_some(rows, 0.0, seed=1) == rows
