"""Block semi-autoregressive decoding: block order, LLaDA's per-step commit counts, committed and
fixed (inpainted) tokens never change, the mask token is never sampled, greedy is deterministic."""
import pytest
import torch

from dllm.models import build_tiny_mdlm
from dllm.sampler import block_schedule, generate_blocks
from mmrl.models.tiny import build_tokenizer


class Sharpened(torch.nn.Module):
    """The tiny model's logits x `factor`: peaked, unequal distributions, where tempered and untempered
    confidences rank positions differently (the random model's near-uniform logits rank alike)."""

    def __init__(self, model, factor: float = 8.0):
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, input_ids=None, attention_mask=None):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        out.logits = out.logits * self.factor
        return out


@pytest.fixture(scope="module")
def setup():
    tok = build_tokenizer()
    model = Sharpened(build_tiny_mdlm(tok, seed=0).eval())
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


def llada_reference(model, prompt, attention, gen_length, block_length, steps, mask_id, temperature, generator,
                    confidence, fixed=None):
    """LLaDA's generate (Nie et al. 2025, Alg. 'low-confidence remasking'; ML-GSAI/LLaDA generate.py),
    written from the paper: blocks left to right; in each, every row commits over the block's steps
    its masks count // steps tokens (the first count % steps steps one more); at each step a token is
    drawn at every masked position from softmax(logits / T) (one multinomial draw per position, in
    order: the same random stream as the sampler) or greedily at T = 0, and the k most confident
    masked positions keep theirs: confidence = the drawn token's probability under softmax(logits)
    ('model', LLaDA) or under the distribution it was drawn from ('sampled')."""
    rows, start = prompt.shape
    canvas = torch.cat([prompt, torch.full((rows, gen_length), mask_id)], 1)
    if fixed is not None:
        canvas[:, start:] = torch.where(fixed >= 0, fixed, canvas[:, start:])
    att = torch.cat([attention, torch.ones(rows, gen_length, dtype=attention.dtype)], 1)
    per_block = steps // (gen_length // block_length)
    for b in range(gen_length // block_length):
        lo, hi = start + b * block_length, start + (b + 1) * block_length
        masks = (canvas[:, lo:hi] == mask_id).sum(-1)
        schedule = [[int(m) // per_block + (1 if s < int(m) % per_block else 0) for s in range(per_block)] for m in masks]
        for s in range(per_block):
            masked = canvas[:, lo:hi] == mask_id
            if not masked.any():
                break
            logits = model(input_ids=canvas, attention_mask=att).logits[:, lo:hi].float()
            logits[..., mask_id] = float("-inf")
            if temperature == 0:
                tokens = logits.argmax(-1)
                drawn_probs = torch.softmax(logits, -1)
            else:
                drawn_probs = torch.softmax(logits / temperature, -1)
                tokens = torch.multinomial(drawn_probs.view(-1, drawn_probs.shape[-1]), 1, generator=generator).view(rows, -1)
            probs = torch.softmax(logits, -1) if confidence == "model" else drawn_probs
            conf = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).masked_fill(~masked, float("-inf"))
            for r in range(rows):
                k = schedule[r][s]
                if k:
                    top = conf[r].topk(k).indices
                    canvas[r, lo + top] = tokens[r, top]
    return canvas[:, start:]


@pytest.mark.parametrize("temperature,confidence", [(0.0, "sampled"), (1.0, "sampled"), (0.3, "sampled"),
                                                    (0.3, "model"), (1.3, "model")])
def test_sampler_equals_llada_generate(setup, temperature, confidence):
    """Same tokens as the reference at T = 0 and T > 0 from the same generator seed, with both
    confidences (which differ away from T = 1), a pinned token included."""
    tok, model, prompt, attention = setup
    fixed = torch.full((2, 16), -1)
    fixed[1, 2] = 40
    kw = dict(gen_length=16, block_length=8, steps=8, mask_id=tok.mask_token_id, temperature=temperature)
    ours = generate_blocks(model, prompt, attention, kw["gen_length"], kw["block_length"], kw["steps"], kw["mask_id"],
                           temperature=temperature, fixed=fixed, generator=torch.Generator().manual_seed(7),
                           confidence=confidence)
    with torch.no_grad():
        reference = llada_reference(model, prompt, attention, generator=torch.Generator().manual_seed(7),
                                    confidence=confidence, fixed=fixed, **kw)
    assert torch.equal(ours, reference)


def test_the_two_confidences_rank_differently_off_temperature_one(setup):
    """At T = 0.3 the tempered and the untempered confidence commit different tokens from the same
    draws (so the reference test above tells the two apart)."""
    tok, model, prompt, attention = setup
    runs = [generate_blocks(model, prompt, attention, 16, 8, 8, tok.mask_token_id, temperature=0.3,
                            generator=torch.Generator().manual_seed(3), confidence=c) for c in ("sampled", "model")]
    assert not torch.equal(*runs)
    with pytest.raises(ValueError, match="confidence"):
        generate_blocks(model, prompt, attention, 16, 8, 8, tok.mask_token_id, confidence="tempered")


class PositionModel(torch.nn.Module):
    """Logits that ignore the input: position i puts logit `strength[i]` on token 50 + i, 0 elsewhere,
    so the greedy token at i is 50 + i with confidence growing with strength[i]."""

    def __init__(self, strength: torch.Tensor, vocab: int = 400):
        super().__init__()
        self.strength, self.vocab = strength, vocab

    def forward(self, input_ids=None, attention_mask=None):
        from types import SimpleNamespace

        rows, width = input_ids.shape
        logits = torch.zeros(rows, width, self.vocab)
        gen = len(self.strength)
        logits[:, width - gen:].scatter_(-1, (50 + torch.arange(gen))[None, :, None].expand(rows, -1, 1),
                                         self.strength[None, :, None].expand(rows, -1, 1))
        return SimpleNamespace(logits=logits)


def test_the_most_confident_positions_commit_first_and_pinned_blocks_keep_llada_counts():
    """One block of 8, 4 steps. Confidence order of positions 3, 7, 0, 5, 1, 6, 2, 4: unpinned, 2 per
    step in that order; with positions 1, 4, 6 pinned, the 5 masks commit 2, 1, 1, 1 (LLaDA's counts
    over the masks left), in the order 3, 7 | 0 | 5 | 2, never finishing early."""
    strength = torch.zeros(8)
    strength[torch.tensor([3, 7, 0, 5, 1, 6, 2, 4])] = torch.linspace(8.0, 1.0, 8)
    model, mask_id = PositionModel(strength), 399
    prompt, attention = torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.long)

    def commits(fixed=None):
        canvases = []
        generate_blocks(model, prompt, attention, 8, 8, 4, mask_id, temperature=0.0, fixed=fixed, on_step=canvases.append)
        previous, order = torch.cat([prompt[0], torch.full((8,), mask_id)]), []
        if fixed is not None:
            previous[2:] = torch.where(fixed[0] >= 0, fixed[0], previous[2:])
        for canvas in canvases:
            order.append(sorted((torch.nonzero(canvas[0] != previous).flatten() - 2).tolist()))
            previous = canvas[0]
        return order, canvases[-1][0, 2:]

    order, out = commits()
    assert order == [[3, 7], [0, 5], [1, 6], [2, 4]] and out.tolist() == list(range(50, 58))
    fixed = torch.full((1, 8), -1)
    fixed[0, torch.tensor([1, 4, 6])] = torch.tensor([11, 14, 16])
    order, out = commits(fixed)
    assert order == [[3, 7], [0], [5], [2]]
    assert out[torch.tensor([1, 4, 6])].tolist() == [11, 14, 16]
