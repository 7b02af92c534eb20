"""Diversity of a group of completions (token id lists), for VAS's trajectory diversity score."""
from __future__ import annotations

import math
from collections import Counter


def ngrams(seq: list[int], n: int) -> Counter:
    return Counter(tuple(seq[i:i + n]) for i in range(len(seq) - n + 1))


def sentence_bleu(hypothesis: list[int], references: list[list[int]], max_n: int = 3, epsilon: float = 0.1) -> float:
    """BLEU of one hypothesis against several references (Papineni et al. 2002), as nltk 3.10's
    sentence_bleu with uniform weights and SmoothingFunction().method1: clipped n-gram precisions for
    n = 1..max_n, each count / max(1, hypothesis n-grams), a zero count becoming epsilon (so a
    hypothesis shorter than n scores epsilon / 1 there); 0 when no unigram matches (nltk returns
    before smoothing); brevity penalty against the closest reference length (the shorter on a tie)."""
    if not hypothesis or not references:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        hyp = ngrams(hypothesis, n)
        max_ref = Counter()
        for ref in references:
            max_ref |= ngrams(ref, n)
        clipped = sum(min(c, max_ref[g]) for g, c in hyp.items())
        if n == 1 and clipped == 0:
            return 0.0
        log_precision += math.log((clipped if clipped > 0 else epsilon) / max(1, sum(hyp.values()))) / max_n
    c = len(hypothesis)
    r = min((abs(len(ref) - c), len(ref)) for ref in references)[1]
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(log_precision)


def self_bleu(sequences: list[list[int]], max_n: int = 3) -> float:
    """Mean BLEU of each sequence against the others (a similarity: 1 = all identical)."""
    if len(sequences) < 2:
        return 1.0
    return sum(sentence_bleu(s, sequences[:i] + sequences[i + 1:], max_n) for i, s in enumerate(sequences)) \
        / len(sequences)


def distinct_n(sequences: list[list[int]], n: int = 3) -> float:
    """Unique n-grams over all n-grams, pooled over the sequences (1 = no repeated n-gram)."""
    pooled = Counter()
    for s in sequences:
        pooled.update(ngrams(s, n))
    total = sum(pooled.values())
    return len(pooled) / total if total else 0.0
