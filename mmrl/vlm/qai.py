"""Question-answer inversion (QAI), TW-GRPO's augmentation that turns single-choice items into
multi-choice ones ("Reinforcing Video Reasoning with Focused Thinking", Dang et al., arXiv
2505.24718; official code longmalongma/TW-GRPO data/question_answer_inverse/convert_{nextgqa,star}.py).

With probability p an item's question is negated; the originally correct option becomes the only
wrong one, k ~ Uniform{1..n-1} of the n-1 originally wrong options are kept (all now correct: the
random drop keeps "pick all but one" from being a shortcut), the kept options are shuffled and relabelled
A, B, ..., and the answer becomes their comma-joined letters. Negation rules: NExT-GQA's ("n't" after
an auxiliary in second position: "why did ..." -> "why didn't ...") and STAR's prefixes ("what will"
-> "what won't", "what happened" -> "what didn't happen"). Where no rule applies the official code
still inverts the answer under the unchanged question (a wrong label); here the item is kept as is.
"""
from __future__ import annotations

import random

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # option letters (also mmrl.vlm.data's)

AUXILIARIES = {"did", "does", "do", "is", "are", "was", "were"}
PREFIXES = {"what will": "what won't", "what happened": "what didn't happen", "what did": "what didn't",
            "what was": "what wasn't", "what would": "what wouldn't", "which was": "which wasn't"}


def negate_question(question: str) -> str | None:
    """The negated, lower-cased question, or None when no rule applies."""
    q = question.strip().lower()
    for prefix, negated in PREFIXES.items():
        if q.startswith(prefix + " "):
            return negated + q[len(prefix):]
    words = q.split(" ")
    if len(words) > 2 and words[1] in AUXILIARIES:
        return " ".join([words[0], words[1] + "n't", *words[2:]])
    return None


def invert(row: dict, rng: random.Random, prompt_field: str = "question", answer_field: str = "answer",
           options_field: str = "options") -> dict:
    """One single-choice row (`answer` a letter indexing `options`) inverted into a multi-choice row."""
    options = row.get(options_field) or []
    answer = str(row.get(answer_field, "")).strip()
    negated = negate_question(str(row.get(prompt_field, "")))
    if len(options) < 2 or len(answer) != 1 or answer not in LETTERS[:len(options)] or negated is None:
        return row
    right = LETTERS.index(answer)
    wrong = [o for i, o in enumerate(options) if i != right]
    items = [(o, True) for o in rng.sample(wrong, rng.randint(1, len(wrong)))] + [(options[right], False)]
    rng.shuffle(items)
    letters = [LETTERS[i] for i, (_, correct) in enumerate(items) if correct]
    answer = ",".join(letters)
    out = {**row, prompt_field: negated, options_field: [o for o, _ in items], answer_field: answer,
           "qa_inverted": True}
    if "solution" in row:  # the row's worked solution argues for the old answer
        out["solution"] = f"<answer>{answer}</answer>"
    return out


def invert_some(rows: list[dict], p: float, seed: int, **fields) -> list[dict]:
    """Each row inverted with probability p (seeded, so the dataset is reproducible)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"data.qa_inversion={p} must be in [0, 1]")
    rng = random.Random(seed)
    return [invert(r, rng, **fields) if rng.random() < p else r for r in rows]
