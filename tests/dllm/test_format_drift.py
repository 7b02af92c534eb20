"""benchmarks/dllm_format_drift.py's gradient split: which answer tokens carry the policy gradient
under d1's one-step estimator and GDPO's ELBO (README, the GDPO demo's collapse)."""
import sys

import pytest
import torch

from dllm.adapter import MaskedDiffusionAdapter
from dllm.models import build_tiny_mdlm
from mmrl.core.advantages import mean_centered_advantages
from mmrl.models.tiny import build_tokenizer
from tests.integration.helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import dllm_format_drift as drift  # noqa: E402


@pytest.fixture(scope="module")
def group():
    """One prompt's group of 4 answers that differ only in the number, two right (7) and two wrong."""
    tok = build_tokenizer()
    model = build_tiny_mdlm(tok, seed=0)
    adapter = MaskedDiffusionAdapter(tok, tok.mask_token_id, block_length=8, steps=8, sft_pad_to=12)
    examples = [{"prompt": "What is 3 + 4?", "answer": "7"}] * 4
    batch = adapter.encode(examples, ["<answer>7</answer>", "<answer>7</answer>", "<answer>5</answer>",
                                      "<answer>9</answer>"])
    advantages = mean_centered_advantages(torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long))  # one group
    return tok, model, adapter, batch, advantages


def test_number_positions_and_the_groups_advantage(group):
    tok, _, _, batch, advantages = group
    numbers = drift.number_positions(tok, batch.completion_ids)
    assert [tok.decode(t) for t in batch.completion_ids[2][numbers[2]]] == ["5"]
    assert numbers.sum().item() == 4
    assert advantages.tolist() == [0.5, 0.5, -0.5, -0.5]


def format_and_number_gradients(model, adapter, tok, batch, advantages, estimator, params):
    scope = batch.completion_mask.bool()
    numbers = drift.number_positions(tok, batch.completion_ids) & scope
    adapter.estimator, adapter.estimator_params = estimator, params
    return drift.gradient_split(model, adapter, batch, advantages, {"format": scope & ~numbers, "numbers": numbers})


def test_one_step_cancels_the_shared_format_tokens_and_the_elbo_does_not(group):
    """Under one_step (no prompt masking) every row scores the same fully masked canvas, so at a position
    where all rows hold the same token the gradients are equal and the zero-mean advantages cancel them:
    the format tokens get no gradient, the number tokens do. The ELBO estimator scores a masked tag in the
    row's own context: the group's masks are shared, but where the number stays visible the contexts
    differ and the tags' gradients do not cancel. Canvas: < answer > N </ answer > EOS; with mask seed 11
    the 3 passes mask nothing, positions 1 3 5 7 and everything (the number is masked whenever a tag is),
    with seed 13 pass 2 masks </ (position 4) beside the visible number."""
    tok, model, adapter, batch, advantages = group
    one_step = format_and_number_gradients(model, adapter, tok, batch, advantages, "one_step", {"p_mask_prompt": 0.0})
    assert one_step["format"] < 1e-6 < 0.1 < one_step["numbers"]
    sdmc = {"nodes": 3, "masks_per_node": 1}
    for seed, tags_see_number in [(11, False), (13, True)]:
        batch.extras["mask_seed"] = torch.full((4,), seed)
        elbo = format_and_number_gradients(model, adapter, tok, batch, advantages, "elbo_sdmc", sdmc)
        assert (elbo["format"] > 1e-3) == tags_see_number, (seed, elbo)
        assert elbo["numbers"] > 0.1
