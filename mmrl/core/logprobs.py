"""Per-token log-probs and entropies from logits without a full fp32 [B, T, V] log-softmax."""
from __future__ import annotations

import torch


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor, chunk_rows: int = 4,
                          with_entropy: bool = False):
    """log softmax(logits)[..., index] computed `chunk_rows` rows at a time.

    logits: [B, T, V] (any float dtype); index: [B, T] token ids.
    Returns logp [B, T] in fp32 and, with `with_entropy`, the entropy [B, T] of each position's
    distribution (detached: it is a metric and a token-selection signal, never differentiated).
    Peak extra memory is one chunk's [chunk_rows, T, V] in fp32 instead of the whole batch's."""
    logps, entropies = [], []
    for start in range(0, logits.shape[0], chunk_rows):
        chunk = logits[start:start + chunk_rows].float()
        lse = torch.logsumexp(chunk, dim=-1)
        picked = chunk.gather(-1, index[start:start + chunk_rows].unsqueeze(-1)).squeeze(-1)
        logps.append(picked - lse)
        if with_entropy:
            with torch.no_grad():
                probs = torch.softmax(chunk, dim=-1)
                entropies.append(lse - (probs * chunk).sum(-1))
    logp = torch.cat(logps)
    return (logp, torch.cat(entropies)) if with_entropy else logp
