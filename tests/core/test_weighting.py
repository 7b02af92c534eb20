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


def _logits(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def test_tw_grpo_weights_hand_computed():
    """G=2, V=2. t=0: both 50/50 -> s=0. t=1: 80/20 vs 20/80 -> d=(-ln2, ln2), s=0.5.
    t=2: 50/50 vs 80/20 -> k = 0.1205 and 0.1486, s=0.13455 -> s^ = 0.2691, w = 1 + 0.7 s^ = 1.1884."""
    from mmrl.core.weighting import group_divergence_weights

    logits = torch.stack([_logits([[0.5, 0.5], [0.8, 0.2], [0.5, 0.5]]),
                          _logits([[0.5, 0.5], [0.2, 0.8], [0.8, 0.2]])])
    w = group_divergence_weights(logits, torch.ones(2, 3), alpha=1.7)
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.7, 1.1884]] * 2), atol=2e-4, rtol=0)
    # a completion that ended: its row counts as uniform at that position and gets weight 0 there
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    w = group_divergence_weights(logits, mask, alpha=1.7)
    assert w[1, 2] == 0 and w[0, 2] == pytest.approx(1.0)  # t=2: 50/50 vs uniform agree -> s=0 -> w=1
    assert w[0, 1] == pytest.approx(1.7)


def test_tw_grpo_prepare_weights_each_group_from_the_policy_logits():
    from mmrl.core.batch import RolloutBatch

    logits = torch.stack([_logits([[0.5, 0.5], [0.8, 0.2], [0.5, 0.5]]),
                          _logits([[0.5, 0.5], [0.2, 0.8], [0.8, 0.2]])]).repeat(2, 1, 1)
    batch = RolloutBatch(prompt_ids=torch.zeros(4, 1, dtype=torch.long), prompt_mask=torch.ones(4, 1),
                         completion_ids=torch.zeros(4, 3, dtype=torch.long), completion_mask=torch.ones(4, 3),
                         group_ids=torch.tensor([0, 0, 1, 1]))
    scheme = weighting.make("tw_grpo", {"alpha": 2.0})
    scheme.prepare(batch, completion_logits=lambda rows: logits[:len(rows)])
    torch.testing.assert_close(batch.token_weights[2], torch.tensor([1.0, 2.0, 1.2691]), atol=2e-4, rtol=0)
    _, weights, stats = scheme.apply(torch.ones(4), None, batch.completion_mask, batch.token_weights)
    assert weights is batch.token_weights and stats["tw_grpo/weight_max"] == pytest.approx(2.0)
    assert stats["tw_grpo/divergence_max"] == pytest.approx(0.5, abs=1e-5)  # s_1 of both groups


def test_tw_grpo_attached_weights_equal_detached_values_and_carry_gradient():
    from mmrl.core.weighting import group_divergence_weights

    logits = torch.stack([_logits([[0.5, 0.5], [0.8, 0.2], [0.5, 0.5]]),
                          _logits([[0.5, 0.5], [0.2, 0.8], [0.8, 0.2]])]).requires_grad_(True)
    mask = torch.ones(2, 3)
    scheme = weighting.make("tw_grpo", {"alpha": 1.7, "detach": False})
    assert scheme.needs_logits and scheme.whole_groups
    _, w, stats = scheme.apply(torch.ones(2), None, mask, None, logits=logits, group_ids=torch.tensor([0, 0]))
    torch.testing.assert_close(w.detach(), group_divergence_weights(logits.detach(), mask, 1.7))
    w.sum().backward()
    assert logits.grad.abs().sum() > 0  # the official code's weights are part of the graph
    assert stats["tw_grpo/weight_max"] == pytest.approx(1.7)


@pytest.mark.parametrize("lengths, differs", [((3, 3), False), ((3, 2), True)])
def test_tw_grpo_attached_gradient_term_cancels_only_for_equal_lengths(lengths, differs):
    """With token-mean aggregation the extra gradient of attached weights is
    sum_t dw_t * (-sum_i A_i mask_it) / N: group-normalised advantages sum to 0, so it vanishes at
    positions every completion reaches and survives where some completions have ended."""
    from mmrl.core import losses

    base = torch.stack([_logits([[0.6, 0.4], [0.8, 0.2], [0.3, 0.7]]),
                        _logits([[0.5, 0.5], [0.2, 0.8], [0.8, 0.2]])])
    mask = torch.tensor([[1.0] * lengths[0] + [0.0] * (3 - lengths[0]), [1.0] * lengths[1] + [0.0] * (3 - lengths[1])])
    ids = torch.zeros(2, 3, dtype=torch.long)
    adv, groups = torch.tensor([1.0, -1.0]), torch.tensor([0, 0])
    grads = []
    for detach in (True, False):
        logits = base.clone().requires_grad_(True)
        scheme = weighting.make("tw_grpo", {"detach": detach})
        logp = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
        w = scheme.group_weights(logits.detach() if detach else logits, mask, groups)
        loss, _ = losses.compute("grpo", logp, logp.detach(), adv, mask, aggregation="token-mean",
                                 token_weights=w, num_seqs=2.0, num_tokens=float(mask.sum()))
        loss.backward()
        grads.append(logits.grad.clone())
    assert (not torch.allclose(grads[0], grads[1], atol=1e-7)) == differs
