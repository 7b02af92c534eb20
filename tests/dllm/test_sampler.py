"""Block semi-autoregressive decoding: block order, LLaDA's per-step commit counts, committed and
fixed (inpainted) tokens never change, the mask token is never sampled, greedy is deterministic."""
import pytest
import torch

from dllm.models import build_tiny_mdlm
from dllm.sampler import block_schedule, generate_blocks
from mmrl.models.tiny import build_tokenizer


@pytest.fixture(scope="module")
def setup():
    tok = build_tokenizer()
    model = build_tiny_mdlm(tok, seed=0).eval()
    enc = tok(["What is 1 + 2?", "What is 3 + 4? Say it"], padding=True, return_tensors="pt")
    return tok, model, enc["input_ids"], enc["attention_mask"]


def test_block_order_commit_counts_and_frozen_tokens(setup):
    tok, model, prompt, attention = setup
    mask_id, start = tok.mask_token_id, prompt.shape[1]
    fixed = torch.full((2, 12), -1)
    fixed[0, 5], fixed[1, 9:11] = 40, torch.tensor([41, 42])  # pinned hint tokens in blocks 2 and 3
    canvases = []
    out = generate_blocks(model, prompt, attention, gen_length=12, block_length=4, steps=6, mask_token_id=mask_id,
                          temperature=1.0, fixed=fixed, generator=torch.Generator().manual_seed(0),
                          on_step=canvases.append)
    assert not (out == mask_id).any()
    assert out[0, 5] == 40 and out[1, 9:11].tolist() == [41, 42]
    previous = torch.cat([prompt, torch.where(fixed >= 0, fixed, torch.full_like(fixed, mask_id))], 1)
    for canvas in canvases:
        changed = canvas != previous
        assert not changed[:, :start].any()  # the prompt never changes
        assert not (changed & (previous != mask_id)).any()  # committed / fixed tokens never change
        for row in range(2):
            cols = torch.nonzero(changed[row]).flatten() - start
            if len(cols):  # every change lies in the first block that still has masks
                block = cols.min().item() // 4
                assert (cols // 4 == block).all()
                assert not (previous[row, start:start + block * 4] == mask_id).any()
        # 4 tokens over 2 steps per block: 2 commits per step (fewer where fixed tokens took the place)
        assert changed.sum(-1).max() <= 2
        previous = canvas
    assert len(canvases) == 6


def test_greedy_is_deterministic_and_never_emits_the_mask(setup):
    tok, model, prompt, attention = setup
    a = generate_blocks(model, prompt, attention, 8, 4, 4, tok.mask_token_id, temperature=0.0)
    b = generate_blocks(model, prompt, attention, 8, 4, 4, tok.mask_token_id, temperature=0.0)
    assert torch.equal(a, b) and not (a == tok.mask_token_id).any()


def test_schedule_errors_name_the_fields():
    assert block_schedule(32, 8, 16) == (4, 4)
    with pytest.raises(ValueError, match="block_length"):
        block_schedule(30, 8, 16)
    with pytest.raises(ValueError, match="diffusion.steps"):
        block_schedule(32, 8, 6)
