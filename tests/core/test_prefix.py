"""Shared-prefix group forward: the packed layout by hand, and log-probs and parameter gradients equal
to the plain per-sample forward on a tiny text model, with and without padding."""
from types import SimpleNamespace

import pytest
import torch

from mmrl.core.batch import RolloutBatch
from mmrl.core.prefix import pack_groups, unpack_logits, use_prefix_sharing
from mmrl.models.tiny import build_tiny_causal_lm, build_tokenizer
from mmrl.text.adapter import CausalLMAdapter


def test_packed_layout_by_hand():
    # group 0: prompt [5, 6] (one pad column), completions [7, 8] and [9, pad]; group 1: prompt [4, 5, 6], [3, 2]
    prompt_ids = torch.tensor([[0, 5, 6], [0, 5, 6], [4, 5, 6]])
    prompt_mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1]])
    completion_ids = torch.tensor([[7, 8], [9, 0], [3, 2]])
    completion_mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    packed = pack_groups(prompt_ids, prompt_mask, completion_ids, completion_mask, torch.tensor([0, 0, 1]))
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 0], [4, 5, 6, 3, 2, 0]]
    assert packed.position_ids[0].tolist() == [0, 1, 2, 3, 2, 3]  # each completion continues from the prompt
    assert packed.position_ids[1, :5].tolist() == [0, 1, 2, 3, 4]
    assert packed.row.tolist() == [0, 0, 1]
    # the first completion token is predicted at the prompt's last position, token j at the previous token
    assert packed.source.tolist() == [[1, 2], [1, 4], [2, 3]]
    a = packed.attention[0, 0].int()
    assert a[3].tolist() == [1, 1, 1, 1, 0, 0]  # 8: prompt and 7, not completion 2
    assert a[4].tolist() == [1, 1, 0, 0, 1, 0]  # 9: prompt and itself, not completion 1
    assert a[1].tolist() == [1, 1, 0, 0, 0, 0]  # prompt: causal over the prompt
    assert a[5].tolist() == [1, 1, 0, 0, 1, 1]  # completion 2's padding query: its keys, never others'
    logits = torch.arange(2 * 6, dtype=torch.float).view(2, 6, 1)
    assert unpack_logits(logits, packed)[..., 0].tolist() == [[1, 2], [1, 4], [8, 9]]


def test_rows_of_one_group_must_share_the_prompt():
    with pytest.raises(ValueError, match="share group id 0 but not their prompt"):
        pack_groups(torch.tensor([[1, 2], [1, 3]]), torch.ones(2, 2), torch.ones(2, 1, dtype=torch.long),
                    torch.ones(2, 1), torch.tensor([0, 0]))


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer()
    return tok, build_tiny_causal_lm(tok, seed=0)


def _qwen2(tok, attention: str, window: int | None, full_layers: int = 1):
    """A tiny Qwen2 with `attention` and, with `window`, sliding-window attention of that width on the
    layers from `full_layers` on (Qwen2's max_window_layers: [full, sliding] for 1)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         use_sliding_window=window is not None, sliding_window=window, max_window_layers=full_layers,
                         pad_token_id=tok.pad_token_id, attn_implementation=attention)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


def _batch(tok, prompt_pad: bool, completion_pad: bool):
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, 300, (3, 9), generator=gen)
    prompt_mask = torch.ones(3, 9, dtype=torch.long)
    if prompt_pad:
        prompt_mask[1, :4] = 0
        prompt_mask[2, :7] = 0
    prompts[prompt_mask == 0] = tok.pad_token_id
    sizes = torch.tensor([3, 2, 4])  # groups of different sizes
    completions = torch.randint(10, 300, (9, 7), generator=gen)
    mask = torch.ones(9, 7, dtype=torch.long)
    if completion_pad:
        for row, keep in ((1, 4), (3, 1), (8, 5)):
            mask[row, keep:] = 0
    completions[mask == 0] = tok.pad_token_id
    return RolloutBatch(prompt_ids=prompts.repeat_interleave(sizes, 0), prompt_mask=prompt_mask.repeat_interleave(sizes, 0),
                        completion_ids=completions, completion_mask=mask,
                        group_ids=torch.arange(3).repeat_interleave(sizes))


def _logp_and_grads(model, adapter, batch):
    model.zero_grad()
    logp = adapter.log_probs(model, batch)
    (logp * batch.completion_mask * torch.linspace(0.5, 1.5, logp.shape[1])).sum().backward()
    return logp.detach() * batch.completion_mask, {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_packed_equals_plain(tok, model, batch):
    """Log-probs and every parameter's gradient of the packed forward equal the plain one's; returns
    the plain (log-probs, gradients)."""
    plain = _logp_and_grads(model, CausalLMAdapter(tok, prefix_sharing=False), batch)
    shared = _logp_and_grads(model, CausalLMAdapter(tok, prefix_sharing=True), batch)
    torch.testing.assert_close(shared[0], plain[0], atol=1e-5, rtol=0)
    for name, grad in plain[1].items():
        torch.testing.assert_close(shared[1][name], grad, atol=1e-5, rtol=0, msg=name)
    return plain


@pytest.mark.parametrize("prompt_pad,completion_pad", [(False, False), (True, True), (True, False)])
def test_shared_prefix_gradients_equal_plain_path(tiny, prompt_pad, completion_pad):
    tok, model = tiny
    batch = _batch(tok, prompt_pad, completion_pad)
    plain = assert_packed_equals_plain(tok, model, batch)
    # a group split over two micro-batches packs each part on its own, with the same result
    part = batch.select(torch.arange(0, 5))
    torch.testing.assert_close(CausalLMAdapter(tok, prefix_sharing=True).log_probs(model, part).detach() *
                               part.completion_mask, plain[0][:5], atol=1e-5, rtol=0)


# eager attention adds the mask to its scores (a boolean mask there masked nothing: 0.21 off); a
# sliding window of 4 over 16-token rows, on one layer of two or on both (one mask for all layers
# lost the window: 0.27 off)
MODEL_CASES = [("sdpa", None, 1), ("eager", None, 1), ("sdpa", 4, 1), ("eager", 4, 1), ("sdpa", 4, 0), ("eager", 3, 0)]


@pytest.mark.parametrize("attention,window,full_layers", MODEL_CASES)
def test_shared_prefix_equals_plain_path_for_every_attention_and_window(attention, window, full_layers):
    tok = build_tokenizer()
    model = _qwen2(tok, attention, window, full_layers)
    assert model.config._attn_implementation == attention
    assert_packed_equals_plain(tok, model, _batch(tok, True, True))


def test_sliding_window_mask_by_hand():
    """Window 2 on a packed row [p0 p1 | a0 a1 | b0 b1]: a1 (index 3 in its own row) sees p1? no
    (3 - 1 = 2 is not < 2), a0 and itself; b0 (index 2) sees p1 and itself, never a0."""
    from mmrl.core.prefix import model_attention_mask

    tok = build_tokenizer()
    model = _qwen2(tok, "sdpa", 2, full_layers=1)
    packed = pack_groups(torch.tensor([[5, 6], [5, 6]]), torch.ones(2, 2), torch.tensor([[7, 8], [9, 10]]),
                         torch.ones(2, 2), torch.tensor([0, 0]))
    masks = model_attention_mask(packed, model)
    assert set(masks) == {"full_attention", "sliding_attention"}
    sliding, full = masks["sliding_attention"][0, 0].int(), masks["full_attention"][0, 0].int()
    assert full[3].tolist() == [1, 1, 1, 1, 0, 0] and sliding[3].tolist() == [0, 0, 1, 1, 0, 0]
    assert sliding[4].tolist() == [0, 1, 0, 0, 1, 0]
    eager = model_attention_mask(packed, _qwen2(tok, "eager", None))
    assert eager.dtype == torch.float32 and eager[0, 0, 3].tolist()[:4] == [0.0] * 4
    assert eager[0, 0, 3, 4].item() == torch.finfo(torch.float32).min


def test_prefix_sharing_needs_maskable_attention_and_known_layers():
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    assert not use_prefix_sharing(True, flash)
    assert use_prefix_sharing(True, SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa")))
    assert not use_prefix_sharing(False, SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa")))
    chunked = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa",
                                                     layer_types=["chunked_attention", "full_attention"]))
    assert not use_prefix_sharing(True, chunked)


def test_an_empty_prompt_is_never_packed(tiny):
    """A group whose prompt has no token: its first completion token has nothing to be predicted
    from; packed, it would read the previous packed row's last position."""
    from mmrl.core.prefix import worth_packing

    tok, model = tiny
    batch = _batch(tok, True, True)
    batch.prompt_mask[3:5] = 0  # group 1 (rows 3, 4) loses its prompt
    assert not worth_packing(batch, model)
    with pytest.raises(ValueError, match="empty prompt"):
        pack_groups(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask, batch.group_ids)
    plain = CausalLMAdapter(tok, prefix_sharing=False).log_probs(model, batch)
    torch.testing.assert_close(CausalLMAdapter(tok, prefix_sharing=True).log_probs(model, batch), plain)


def test_shared_prompt_cache_samples_the_same_completions(tiny):
    """Generation with each group's prompt prefilled once (its KV cache repeated per row) draws the
    same completions from the same seed as a prefill per row: prompts of different lengths (left
    padding), groups of different sizes."""
    from mmrl.config import RolloutConfig

    tok, model = tiny
    examples = [{"prompt": [{"role": "user", "content": "What is 2 + 3?"}]},
                {"prompt": [{"role": "user", "content": "What is 12 + 7? Think step by step, then answer."}]}]
    outs = []
    for share in (False, True):
        torch.manual_seed(5)
        outs.append(CausalLMAdapter(tok, prefix_sharing=share).generate(model, examples, [3, 2],
                                                                        RolloutConfig(max_new_tokens=12)))
    assert (outs[0].prompt_mask == 0).any()
    assert torch.equal(outs[0].completion_ids, outs[1].completion_ids)
    assert outs[0].completions_text == outs[1].completions_text
    # the logits of every generated token, with and without the shared cache (a position offset on the
    # padded rows changes them by ~3e-3 and would fail here)
    adapter = CausalLMAdapter(tok, prefix_sharing=True)
    sizes, ids, mask = adapter._grouped_prompts(model, examples, [3, 2])
    logits = []
    for cache in (None, adapter._shared_prompt_cache(model, ids, mask, sizes)):
        out = model.eval().generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=4,
                                    past_key_values=cache, output_logits=True, return_dict_in_generate=True,
                                    pad_token_id=tok.pad_token_id)
        logits.append(torch.stack(out.logits))
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=0)


def test_packing_only_where_it_costs_fewer_flops():
    """Token units: tokens + (query, key) pairs / (6 d). d = 4096, G = 8, a 1024-token prompt:
    256-token completions: plain 8 (1280 + 1280^2 / 24576) = 10773 > packed 3072 + 3072^2 / 24576 = 3456;
    4096-token completions: plain 8 (5120 + 5120^2 / 24576) = 49493 < packed 33792 + 33792^2 / 24576 = 80256."""
    from mmrl.core.prefix import packing_pays

    mask, groups = torch.ones(8, 1024), torch.zeros(8, dtype=torch.long)
    assert packing_pays(mask, 256, groups, 4096)
    assert not packing_pays(mask, 4096, groups, 4096)
    assert not packing_pays(mask[:1], 256, groups[:1], 4096)  # a group of one: nothing shared


def test_packing_cost_counts_the_padding_of_packed_rows():
    """Both forwards pad to their widest row. d = 64, C = 32: one group of 8 with a 64-token prompt
    and seven single rows with 8-token prompts (block width 64). Plain: 15 rows of 96,
    15 (96 + 96^2 / 384) = 1800. Packed: 8 rows padded to 64 + 8 * 32 = 320,
    8 (320 + 320^2 / 384) = 4693 > 1800. Counted without padding, packed 587 + 7 x 44 = 896 was below
    plain 960 + 7 x 44 = 1269, and the batch was packed."""
    from mmrl.core.prefix import packing_pays

    mask = torch.zeros(15, 64)
    mask[:8] = 1
    mask[8:, -8:] = 1
    groups = torch.tensor([0] * 8 + list(range(1, 8)))
    assert not packing_pays(mask, 32, groups, 64)
    assert packing_pays(mask[:8], 32, groups[:8], 64)  # the group alone: 1 row of 320 = 587 < 8 rows of 96 = 960


def test_the_gradient_tests_take_the_packed_path(tiny):
    from mmrl.core.prefix import packing_pays
    from mmrl.models.introspect import hidden_size_of

    tok, model = tiny
    batch = _batch(tok, True, True)
    assert packing_pays(batch.prompt_mask, batch.completion_ids.shape[1], batch.group_ids, hidden_size_of(model))
