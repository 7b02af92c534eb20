import pytest
import torch

from mmrl.core import weighting
from mmrl.core.batch import RolloutBatch


def _weights(rows, adv, groups=None, **kw):
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    groups = torch.zeros(len(rows), dtype=torch.long) if groups is None else torch.tensor(groups)
    return weighting.make("gtpo", kw).conflict_weights(ids, mask, groups, torch.tensor(adv)).tolist()


def test_gtpo_conflict_tokens_hand_computed():
    A, B, C, D = 11, 12, 13, 14
    # pos "A B C", neg "A B D": A and B conflict -> amplified in pos, dropped in neg
    assert _weights([[A, B, C], [A, B, D]], [1.0, -1.0]) == [[2, 2, 1], [0, 0, 1]]
    # a zero-advantage completion is neither side; another group never conflicts
    assert _weights([[A, B, C], [A, B, D], [A, B, C]], [1.0, -1.0, 0.0]) == [[2, 2, 1], [0, 0, 1], [1, 1, 1]]
    assert _weights([[A, B], [A, B]], [1.0, -1.0], groups=[0, 1]) == [[1, 1], [1, 1]]
    # padding never conflicts (token id 0 beyond the shorter completion)
    assert _weights([[A, B, C], [A, 0][:1]], [1.0, -1.0]) == [[2, 1, 1], [0, 0, 0]]


def test_gtpo_runs_mode_counts_only_leading_and_trailing_runs():
    A, B, C, D, X, Y = 11, 12, 13, 14, 15, 16
    pos, neg = [A, X, B, C], [A, Y, B, D]
    assert _weights([pos, neg], [1.0, -1.0]) == [[2, 1, 2, 1], [0, 1, 0, 1]]  # B at position 2 conflicts
    assert _weights([pos, neg], [1.0, -1.0], conflicts="runs") == [[2, 1, 1, 1], [0, 1, 1, 1]]
    # trailing runs are aligned at each completion's end: "X C" vs "Y Z C" share the final C
    assert _weights([[X, C], [Y, D, C]], [1.0, -1.0], conflicts="runs") == [[1, 2, 0], [1, 1, 0]]


def test_gtpo_entropy_filter_and_shaping():
    scheme = weighting.make("gtpo")
    entropy = torch.tensor([[0.8, 0.8], [0.5, 0.5]])
    adv, _, stats = scheme.apply(torch.tensor([1.0, 1.0]), entropy, torch.ones(2, 2), None)
    # <H> = 0.8 > 0.7 -> 0; <H> = 0.5 -> 1 - 0.1 * 0.5
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.95]))
    assert stats["gtpo/kept_frac"].item() == 0.5


def test_gtpo_prepare_sets_token_weights_on_the_batch():
    batch = RolloutBatch(prompt_ids=torch.ones(2, 1, dtype=torch.long), prompt_mask=torch.ones(2, 1, dtype=torch.long),
                         completion_ids=torch.tensor([[5, 6], [5, 7]]), completion_mask=torch.ones(2, 2, dtype=torch.long),
                         group_ids=torch.tensor([0, 0]), advantages=torch.tensor([0.5, -0.5]))
    weighting.make("gtpo").prepare(batch)
    assert batch.token_weights.tolist() == [[2.0, 1.0], [0.0, 1.0]]


def test_entropy_topk_keeps_largest_abs_advantage_times_entropy():
    scheme = weighting.make("entropy_topk", {"fraction": 0.5})
    entropy = torch.tensor([[1.0, 0.2, 0.5], [0.9, 0.1, 3.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])  # 5 valid tokens -> keep ceil(2.5) = 3
    # scores |A| H: row 0 (A = 2): [2, .4, 1]; row 1 (A = -1): [.9, .1, masked]
    adv, w, stats = scheme.apply(torch.tensor([2.0, -1.0]), entropy, mask, None)
    assert w.tolist() == [[1, 0, 1], [1, 0, 0]]
    assert torch.equal(adv, torch.tensor([2.0, -1.0]))
    assert stats["entropy_topk/kept_frac"].item() == pytest.approx(0.6)
    _, w2, _ = scheme.apply(torch.tensor([2.0, -1.0]), entropy, mask, torch.full((2, 3), 0.5))
    assert w2.tolist() == [[0.5, 0, 0.5], [0.5, 0, 0]]  # composes with existing weights


def test_unknown_weighting_and_bad_params():
    assert weighting.make(None) is None
    with pytest.raises(KeyError, match="gtpo"):
        weighting.make("nope")
    with pytest.raises(ValueError, match="fraction"):
        weighting.make("entropy_topk", {"fraction": 0})
