"""Sample-based benchmark metrics: pass@k, maj@k, mean@k over n samples of one problem.

All three take the n samples of one problem in sample-index order and return a number in [0, 1];
a benchmark's score is the mean over its problems.
"""
from __future__ import annotations

from typing import Callable, Sequence


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, "Evaluating Large Language
    Models Trained on Code", eq. 1):  pass@k = 1 - C(n-c, k) / C(n, k),
    computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i) to stay exact in floating point for large n."""
    n, c = num_samples, num_correct
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples, got n={n} (raise eval.num_samples)")
    if not 0 <= c <= n:
        raise ValueError(f"{c} correct of {n} samples")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_at_k(correct: Sequence[bool], k: int) -> float:
    """mean@k (avg@k): the fraction of the first k samples that are correct."""
    if not 1 <= k <= len(correct):
        raise ValueError(f"mean@{k} needs 1 <= k <= {len(correct)} samples (raise eval.num_samples)")
    return sum(bool(c) for c in correct[:k]) / k


def majority_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int,
                  same_answer: Callable[[str, str], bool]) -> float:
    """maj@k (self-consistency, Wang et al. 2023): vote over the answers of the first k samples and
    score the most frequent one.

    `answers[i]` is the extracted final answer of sample i (None: it states none, and casts no
    vote); `correct[i]` its grade. Answers are pooled into classes with `same_answer` (math-verify
    equivalence, so "0.5" and "\\frac{1}{2}" vote together); a class is correct when its first
    member was graded correct. Ties: when m classes share the top count the score is the fraction
    of them that are correct, the expected score of breaking the tie uniformly at random (so a
    tie between a right and a wrong answer scores 0.5, not an order-dependent 0 or 1).
    No votes at all scores 0."""
    if not 1 <= k <= len(answers) or len(answers) != len(correct):
        raise ValueError(f"maj@{k} needs 1 <= k <= {len(answers)} samples with one grade each")
    classes: list[list] = []  # [representative answer, votes, correct]
    for answer, ok in zip(answers[:k], correct[:k]):
        if answer is None:
            continue
        for cls in classes:
            if cls[0] == answer or same_answer(cls[0], answer):
                cls[1] += 1
                break
        else:
            classes.append([answer, 1, bool(ok)])
    if not classes:
        return 0.0
    top = max(votes for _, votes, _ in classes)
    tied = [ok for _, votes, ok in classes if votes == top]
    return sum(tied) / len(tied)
