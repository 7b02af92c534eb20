"""Answer-checking rewards on math problems, through math-verify (numeric and LaTeX equivalence)."""
from __future__ import annotations

import functools
import re

from mmrl.rewards.registry import REWARDS

_TAGGED = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} in `text`, braces balanced; None if there is none."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def extract_answer(completion: str) -> str | None:
    """The final answer: the last <answer>...</answer> span (a \\boxed{} inside it wins), else the
    last \\boxed{...}; None when the completion states no answer."""
    tagged = _TAGGED.findall(completion)
    if tagged:
        span = tagged[-1]
        return last_boxed(span) or span.strip()
    return last_boxed(completion)


@functools.lru_cache(maxsize=65536)
def _parse_gold(gold: str):
    from math_verify import parse
    return parse(gold if "\\boxed" in gold or "$" in gold else f"\\boxed{{{gold}}}")


def answers_match(predicted: str, gold: str) -> bool:
    from math_verify import parse, verify
    gold_parsed = _parse_gold(gold)
    pred_parsed = parse(f"\\boxed{{{predicted}}}")
    if not pred_parsed:
        pred_parsed = parse(predicted)
    return bool(gold_parsed) and bool(pred_parsed) and verify(gold_parsed, pred_parsed)


@REWARDS.register("accuracy_math")
def accuracy_math(completions, examples, completion_lengths=None, answer_key: str = "answer"):
    """1.0 if the completion's final answer (tagged or boxed) equals the example's answer, else 0."""
    scores = []
    for text, example in zip(completions, examples):
        predicted = extract_answer(text)
        scores.append(1.0 if predicted and answers_match(predicted, str(example[answer_key])) else 0.0)
    return scores


def same_answer(a: str, b: str) -> bool:
    """Two extracted answers are the same value (math-verify), for majority voting."""
    return a.strip() == b.strip() or answers_match(b, a)


# What evaluation needs beyond the grade: the answer a completion states (maj@k votes on it).
accuracy_math.extract_answer = extract_answer
accuracy_math.same_answer = same_answer
