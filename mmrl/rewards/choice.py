"""Task-aware answer checking (multiple choice, numbers, words) and TW-GRPO's soft multi-choice reward."""
from __future__ import annotations

import re

from mmrl.rewards.math import answers_match, extract_answer, same_answer
from mmrl.rewards.registry import REWARDS

_LETTER = re.compile(r"^\(?([A-Z])\)?(?:[.:)]|\s|$)")
_NUMERIC = re.compile(r"[\d\\]")


def choice_letters(answer: str) -> set[str]:
    """Letters of a multiple-choice answer: "B", "(B)", "B. blue", "A, C" -> {"B"} / {"A", "C"};
    empty when the text names no option letter."""
    parts = [p.strip() for p in answer.replace(" ", "").split(",")] if "," in answer else [answer.strip()]
    letters = set()
    for p in parts:
        m = _LETTER.match(p)
        if not m:
            return set()
        letters.add(m.group(1))
    return letters


def normalize_words(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def task_aware_match(predicted: str, example: dict, answer_key: str = "answer") -> bool:
    """The check a TON-style accuracy reward makes for each kind of task: option letters for
    multiple-choice rows (non-empty `options`), math-verify equivalence for numbers and LaTeX,
    case- and punctuation-insensitive equality for words."""
    gold = str(example[answer_key])
    if example.get("options"):
        return bool(choice_letters(gold)) and choice_letters(predicted) == choice_letters(gold)
    if _NUMERIC.search(gold):
        return answers_match(predicted, gold)
    return normalize_words(predicted) == normalize_words(gold)


@REWARDS.register("accuracy_task")
def accuracy_task(completions, examples, completion_lengths=None, answer_key: str = "answer"):
    """1.0 if the stated answer (last <answer> span, or \\boxed{}) is right for the row's kind of task
    (TON, arXiv 2505.16854 §3: "task-aware" accuracy: choices, numbers, free words), else 0."""
    scores = []
    for text, example in zip(completions, examples):
        predicted = extract_answer(text)
        scores.append(1.0 if predicted and task_aware_match(predicted, example, answer_key) else 0.0)
    return scores


@REWARDS.register("accuracy_choice_soft")
def accuracy_choice_soft(completions, examples, completion_lengths=None, answer_key: str = "answer"):
    """TW-GRPO's soft multi-choice reward (Dang et al., arXiv 2505.24718, Eq. 7; official code
    `accuracy_reward`): with P the predicted letters and G the gold letters,
        r = |P| / |G|  if P is a non-empty subset of G,  else 0,
    so the exact set scores 1, a correct partial answer its share, and any wrong letter 0. The
    code first tries math-verify on the whole completion; that step is left out here, since on
    letter answers it can only agree with the set comparison or match letters outside the tags."""
    scores = []
    for text, example in zip(completions, examples):
        predicted = extract_answer(text)
        gold = choice_letters(str(example[answer_key]))
        pred = choice_letters(predicted) if predicted else set()
        scores.append(len(pred) / len(gold) if pred and gold and pred <= gold else 0.0)
    return scores


def same_task_answer(a: str, b: str) -> bool:
    letters_a, letters_b = choice_letters(a), choice_letters(b)
    if letters_a or letters_b:
        return letters_a == letters_b
    if _NUMERIC.search(a) or _NUMERIC.search(b):
        return same_answer(a, b)
    return normalize_words(a) == normalize_words(b)


for _fn in (accuracy_task, accuracy_choice_soft):
    _fn.extract_answer = extract_answer
    _fn.same_answer = same_task_answer
