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


_FIRST_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FIRST_TAG_LINE = re.compile(r"<answer>(.*?)</answer>")  # TON's code: no DOTALL, the answer on one line


def tagged_gold(gold: str) -> str:
    """The gold answer as the official datasets store it, inside <answer> tags."""
    return gold if "<answer>" in gold else f"<answer>{gold}</answer>"


def whole_completion_verifies(completion: str, gold: str) -> bool:
    """R1-V's first check (TON's and TW-GRPO's code): math-verify on the whole completion against the
    tagged gold, verify(parse(completion), parse(gold)); any error counts as no match."""
    from math_verify import parse, verify
    try:
        return float(verify(parse(completion), parse(tagged_gold(gold)))) > 0
    except Exception:  # noqa: BLE001 - the official code swallows parser errors the same way
        return False


def first_answer(text: str, pattern=_FIRST_TAG) -> str:
    """The first <answer> span, stripped, or the whole text stripped when there is none (R1-V)."""
    m = pattern.search(text)
    return m.group(1).strip() if m else text.strip()


@REWARDS.register("accuracy_r1v")
def accuracy_r1v(completions, examples, completion_lengths=None, answer_key: str = "answer"):
    """TON's official accuracy (kokolerk/TON src/r1-v/.../grpo.py `accuracy_reward`, from R1-V): 1.0
    if math-verify finds the whole completion equal to the gold, else 1.0 if the first <answer> span
    on one line (or the whole completion), stripped, equals the gold's exactly, else 0. The
    paper's "task-aware" lenient reading is `accuracy_task`."""
    scores = []
    for text, example in zip(completions, examples):
        gold = str(example[answer_key])
        ok = whole_completion_verifies(text, gold) or \
            first_answer(text, _FIRST_TAG_LINE) == first_answer(tagged_gold(gold), _FIRST_TAG_LINE)
        scores.append(1.0 if ok else 0.0)
    return scores


@REWARDS.register("accuracy_choice_soft")
def accuracy_choice_soft(completions, examples, completion_lengths=None, answer_key: str = "answer",
                         parse: str = "lenient"):
    """TW-GRPO's soft multi-choice reward (Dang et al., arXiv 2505.24718, Eq. 7): with P the predicted
    options and G the gold ones,
        r = |P| / |G|  if P is a non-empty subset of G,  else 0,
    so the exact set scores 1, a correct partial answer its share, and any wrong option 0.
    `parse: official` reads the answer as the official code (longmalongma/TW-GRPO grpo.py
    `accuracy_reward`): 1.0 if math-verify finds the whole completion equal to the gold; else P and
    G are the comma-separated items (spaces removed) of the first <answer> span (or the whole text),
    so "(A)" is not "A". `parse: lenient` (the default) takes the last <answer> span (or \\boxed{})
    and reads option letters: "(A)", "A. red" and "A" are the same answer; no math-verify step."""
    if parse not in ("lenient", "official"):
        raise ValueError(f"rewards accuracy_choice_soft params.parse: '{parse}' is not 'lenient' or 'official'")
    score = official_soft_score if parse == "official" else lenient_soft_score
    return [score(text, str(example[answer_key])) for text, example in zip(completions, examples)]


def official_soft_score(text: str, gold: str) -> float:
    """TW-GRPO's code: math-verify on the whole completion, else the share of the first <answer>'s
    comma-separated items (spaces removed) among the gold's, 0 if any is not a gold item."""
    if whole_completion_verifies(text, gold):
        return 1.0
    pred = set(first_answer(text).replace(" ", "").split(","))
    items = set(first_answer(tagged_gold(gold)).replace(" ", "").split(","))
    return len(pred) / len(items) if pred <= items else 0.0


def lenient_soft_score(text: str, gold: str) -> float:
    """The option letters of the last <answer> (or \\boxed{}) against the gold's: |P| / |G| for P inside G."""
    predicted = extract_answer(text)
    letters, pred = choice_letters(gold), (choice_letters(predicted) if predicted else set())
    return len(pred) / len(letters) if pred and letters and pred <= letters else 0.0


def same_task_answer(a: str, b: str) -> bool:
    letters_a, letters_b = choice_letters(a), choice_letters(b)
    if letters_a or letters_b:
        return letters_a == letters_b
    if _NUMERIC.search(a) or _NUMERIC.search(b):
        return same_answer(a, b)
    return normalize_words(a) == normalize_words(b)


for _fn in (accuracy_task, accuracy_choice_soft, accuracy_r1v):
    _fn.extract_answer = extract_answer
    _fn.same_answer = same_task_answer
