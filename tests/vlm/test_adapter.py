import json

import pytest
import torch
from PIL import Image

from mmrl.config import load_config
from mmrl.config import RolloutConfig
from mmrl.core.batch import RolloutBatch
from mmrl.models.tiny import build_tokenizer
from mmrl.vlm import VLMAdapter
from mmrl.vlm.adapter import join_vision, rows_of_vision
from mmrl.vlm.data import load_image_examples
from mmrl.vlm.tiny import build_processor, build_tiny_vlm


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def adapter(tok):
    return VLMAdapter(build_processor(tok), min_pixels=28 * 28, max_pixels=84 * 84)


@pytest.fixture
def model(tok):
    return build_tiny_vlm(tok, seed=0)


def example(images, text="How many squares are there?"):
    content = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": text}]
    return {"prompt": [{"role": "user", "content": content}], "answer": "1"}


def img(w, h, colour=(200, 30, 30)):
    return Image.new("RGB", (w, h), colour)


def test_vision_rows_round_trip_with_unequal_images():
    grid = torch.tensor([[1, 2, 2], [1, 4, 2], [1, 2, 4]])  # 4, 8, 8 patches
    pv = torch.arange(20 * 3, dtype=torch.float32).reshape(20, 3)
    rows = rows_of_vision(pv, grid, [1, 0, 2])  # row 0: image 0; row 1: none; row 2: images 1, 2
    assert rows["pixel_values"].shape == (3, 16, 3) and rows["num_patches"].tolist() == [4, 0, 16]
    assert rows["image_grid_thw"].shape == (3, 2, 3) and rows["num_images"].tolist() == [1, 0, 2]
    joined = join_vision(rows)
    torch.testing.assert_close(joined["pixel_values"], pv)
    torch.testing.assert_close(joined["image_grid_thw"], grid)
    picked = join_vision({k: v[[2]] for k, v in rows.items()})  # a micro-batch of one row
    torch.testing.assert_close(picked["pixel_values"], pv[4:])


def test_concat_pads_extras_of_different_widths(adapter):
    a = adapter.encode([example([img(28, 28)])], ["<answer>1</answer>"])
    b = adapter.encode([example([img(84, 56)])], ["<answer>2</answer>"])
    both = RolloutBatch.concat([a, b])
    assert both.extras["pixel_values"].shape[:2] == (2, b.extras["pixel_values"].shape[1])
    torch.testing.assert_close(join_vision(both.extras)["image_grid_thw"],
                               torch.cat([a.extras["image_grid_thw"][0], b.extras["image_grid_thw"][0]]))


def test_batched_log_probs_equal_one_row_at_a_time(adapter, model):
    """Left-padded prompts with different image sizes and completions of different lengths: each
    row's log-probs in the batch equal that row scored alone (3-D rope positions included)."""
    exs = [example([img(28, 28)]), example([img(84, 56), img(28, 56)], "Which is bigger?"), example([img(56, 56)])]
    comps = ["<answer>1</answer>", "<think>two</think><answer>3</answer>", "4"]
    batch = adapter.encode(exs, comps)
    model.eval()
    with torch.no_grad():
        together = adapter.log_probs(model, batch)
        for i in range(3):
            alone = adapter.log_probs(model, adapter.encode([exs[i]], [comps[i]]))
            n = int(batch.completion_mask[i].sum())
            torch.testing.assert_close(together[i, :n], alone[0, :n], atol=1e-5, rtol=0)


def test_vision_inputs_change_the_log_probs(adapter, model):
    """The image reaches the model: a different picture gives different completion log-probs."""
    with torch.no_grad():
        red = adapter.log_probs(model, adapter.encode([example([img(56, 56)])], ["<answer>1</answer>"]))
        blue = adapter.log_probs(model, adapter.encode([example([img(56, 56, (0, 0, 250))])], ["<answer>1</answer>"]))
    assert (red - blue).abs().max() > 1e-4


def test_generate_groups_share_prompt_pixels(adapter, model):
    exs = [example([img(28, 28)]), example([img(56, 84)])]
    out = adapter.generate(model, exs, [2, 3], RolloutConfig(max_new_tokens=5))
    assert out.group_ids.tolist() == [0, 0, 1, 1, 1] and len(out.completions_text) == 5
    assert out.extras["num_images"].tolist() == [1] * 5
    torch.testing.assert_close(out.extras["pixel_values"][2], out.extras["pixel_values"][4])
    logp = adapter.log_probs(model, out)
    assert logp.shape == out.completion_ids.shape and torch.isfinite(logp).all()


def test_sampled_image_token_in_a_completion_is_text(adapter, tok):
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    ids = torch.tensor([[40, pad, pad, 41, pad]])
    assert adapter.mm_token_type_ids(ids, prompt_length=3).tolist() == [[0, 1, 1, 0, 0]]


def write_rows(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_missing_and_corrupt_images_skip_rows(tmp_path):
    img(28, 28).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    rows = [{"problem": "a?", "answer": "1", "images": ["ok.png"]},
            {"problem": "b?", "answer": "2", "images": ["missing.png"]},
            {"problem": "c?", "answer": "3", "images": ["bad.png"]},
            {"problem": "d?", "answer": "B", "image": "ok.png", "options": ["red", "blue"]}]
    cfg = load_config(None, [f"data.source={write_rows(tmp_path, rows)}", "data.prompt_field=problem",
                             "data.prompt_template='{problem}'"])
    examples, skipped = load_image_examples(cfg.data)
    assert skipped == 2 and [e["answer"] for e in examples] == ["1", "B"]
    content = examples[1]["prompt"][0]["content"]
    assert content[0] == {"type": "image", "image": str(tmp_path / "ok.png")}
    assert content[1]["text"] == "d?\nA. red\nB. blue"


def test_a_truncated_jpeg_is_skipped_at_load_and_named(tmp_path, caplog):
    """PIL's verify() reads only a JPEG's headers: a file cut in half passed it and then failed mid-rollout
    ('image file is truncated', naming no file). Decoded at load, its row is skipped and counted."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "whole.jpg", quality=95)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    with Image.open(tmp_path / "cut.jpg") as opened:
        opened.verify()  # the old check: passes
    rows = [{"question": "a?", "answer": "1", "images": ["whole.jpg"]},
            {"question": "b?", "answer": "2", "images": ["cut.jpg"]}]
    path = write_rows(tmp_path, rows)
    cfg = load_config(None, [f"data.source={path}"])
    examples, skipped = load_image_examples(cfg.data)
    assert skipped == 1 and [e["answer"] for e in examples] == ["1"]
    assert f"skipping {path}:2: image {tmp_path / 'cut.jpg'} unreadable" in caplog.text


def test_image_url_is_refused(tmp_path):
    rows = [{"question": "a?", "answer": "1", "images": ["https://example.com/x.png"]}]
    cfg = load_config(None, [f"data.source={write_rows(tmp_path, rows)}"])
    with pytest.raises(ValueError, match=r"data.jsonl:1: image .* is a URL; mmrl does not download"):
        load_image_examples(cfg.data)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_other_qwen_vl_families_batch_equals_alone_and_round_trip(tok, family, tmp_path):
    """Qwen2-VL and Qwen3-VL (patch 16) through the same adapter, loaded back from a local dir."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from mmrl.vlm.tiny import save_tiny_vlm

    save_tiny_vlm(tmp_path, family=family)
    model, processor = AutoModelForImageTextToText.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)
    adapter = VLMAdapter(processor, min_pixels=32 * 32, max_pixels=96 * 96)
    exs = [example([img(32, 32)]), example([img(96, 64)], "Which?")]
    comps = ["<answer>1</answer>", "<think>x</think><answer>2</answer>"]
    batch = adapter.encode(exs, comps)
    with torch.no_grad():
        together = adapter.log_probs(model.eval(), batch)
        for i in range(2):
            alone = adapter.log_probs(model, adapter.encode([exs[i]], [comps[i]]))
            n = int(batch.completion_mask[i].sum())
            torch.testing.assert_close(together[i, :n], alone[0, :n], atol=1e-5, rtol=0)
    out = adapter.generate(model, exs, 2, RolloutConfig(max_new_tokens=4))
    assert len(out) == 4


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_vision_encoded_once_per_group_gives_the_plain_gradients(tok, family):
    """Groups of completions sharing a prompt: one vision-tower pass per group gives the same
    log-probs and the same parameter gradients (vision tower included) as one pass per row."""
    model = build_tiny_vlm(tok, seed=0, family=family)
    adapter = VLMAdapter(build_processor(tok, family=family), min_pixels=32 * 32, max_pixels=96 * 96)
    exs = [example([img(64, 64)]), example([img(96, 64, (0, 90, 200)), img(32, 32)], "Which?")]
    out = adapter.generate(model, exs, [3, 2], RolloutConfig(max_new_tokens=5))
    assert_shared_vision_gives_plain_gradients(adapter, model, out)


def assert_shared_vision_gives_plain_gradients(adapter, model, out, switch: str = "share_vision"):
    """Log-probs and parameter gradients (vision tower included) of `out` are the same with the
    adapter's `switch` on as off: `share_vision` (the vision tower run once per group) or
    `prefix_sharing` (each group's prompt packed once with its completions)."""
    if switch == "prefix_sharing":  # the batch takes the packed path
        from mmrl.core.prefix import packing_pays
        from mmrl.models.introspect import hidden_size_of
        assert packing_pays(out.prompt_mask, out.completion_ids.shape[1], out.group_ids, hidden_size_of(model))
    grads = []
    adapter.share_vision = adapter.prefix_sharing = False
    for on in (False, True):
        setattr(adapter, switch, on)
        model.zero_grad()
        logp = adapter.log_probs(model, out)
        (logp * out.completion_mask).sum().backward()
        grads.append((logp.detach() * out.completion_mask,
                      {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    setattr(adapter, switch, False)
    (plain_logp, plain), (shared_logp, shared) = grads
    torch.testing.assert_close(shared_logp, plain_logp, atol=1e-5, rtol=0)
    assert plain.keys() == shared.keys() and any("visual" in n for n in plain)
    for name, g in plain.items():
        torch.testing.assert_close(shared[name], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_generation_with_images_encoded_once_per_group_samples_the_same(tok, family):
    model = build_tiny_vlm(tok, seed=0, family=family)
    adapter = VLMAdapter(build_processor(tok, family=family), min_pixels=32 * 32, max_pixels=96 * 96)
    exs = [example([img(64, 64)]), example([img(96, 64, (0, 90, 200)), img(32, 32)], "Which?")]
    outs = []
    for share in (False, True):
        adapter.share_vision = share
        torch.manual_seed(3)
        outs.append(adapter.generate(model, exs, [3, 2], RolloutConfig(max_new_tokens=8)))
    assert torch.equal(outs[0].completion_ids, outs[1].completion_ids)
    assert outs[0].completions_text == outs[1].completions_text


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_shared_prefix_forward_gives_the_plain_gradients(tok, family):
    """Each group's prompt (images included) packed once with its completions (mmrl.core.prefix, 3-D
    rope positions from the model's get_rope_index): log-probs and parameter gradients (vision tower
    included) equal the plain per-row forward's, with left-padded prompts of different lengths and
    completions of different lengths."""
    model = build_tiny_vlm(tok, seed=0, family=family)
    adapter = VLMAdapter(build_processor(tok, family=family), min_pixels=32 * 32, max_pixels=96 * 96)
    exs = [example([img(64, 64)]), example([img(96, 64, (0, 90, 200)), img(32, 32)], "Which?")]
    torch.manual_seed(0)
    out = adapter.generate(model, exs, [3, 2], RolloutConfig(max_new_tokens=6))
    out.completion_mask[1, 2:] = 0  # a short completion next to full-length ones
    assert (out.prompt_mask == 0).any()
    assert_shared_vision_gives_plain_gradients(adapter, model, out, switch="prefix_sharing")


@pytest.mark.parametrize("attention,window", [("eager", None), ("sdpa", 8), ("eager", 8)])
def test_shared_prefix_forward_under_eager_attention_and_a_sliding_window(tok, attention, window):
    """The packed VLM forward with eager attention (an additive mask) and with Qwen2.5-VL's sliding
    window on its second layer (8 tokens, shorter than every row): plain log-probs and gradients."""
    overrides = {} if window is None else dict(use_sliding_window=True, sliding_window=window, max_window_layers=1)
    model = build_tiny_vlm(tok, seed=0, attn_implementation=attention, text_overrides=overrides)
    text_config = model.config.get_text_config()
    assert text_config._attn_implementation == attention
    assert ("sliding_attention" in text_config.layer_types) == (window is not None)
    adapter = VLMAdapter(build_processor(tok), min_pixels=32 * 32, max_pixels=96 * 96)
    exs = [example([img(64, 64)]), example([img(96, 64, (0, 90, 200)), img(32, 32)], "Which?")]
    torch.manual_seed(0)
    out = adapter.generate(model, exs, [3, 2], RolloutConfig(max_new_tokens=6))
    out.completion_mask[1, 2:] = 0
    assert_shared_vision_gives_plain_gradients(adapter, model, out, switch="prefix_sharing")


def greedy_logits(adapter_cls_kwargs, make, model, examples, sizes, shift_rope: int = 0):
    """Greedy generation of 5 tokens per row: (sequences, logits [N, 5, V]). `shift_rope` moves the shared
    cache's rope offsets by that many positions (an off-by-one the equality test must catch)."""
    adapter = make(**adapter_cls_kwargs)
    _, _, _, inputs = adapter.generation_inputs(model, examples, torch.tensor(sizes))
    if shift_rope:
        rope = next(m for m in model.modules() if hasattr(m, "rope_deltas"))
        rope.rope_deltas = rope.rope_deltas + shift_rope
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=adapter.tokenizer.pad_token_id,
                             suppress_tokens=adapter.suppressed)
    return out.sequences, torch.stack(out.logits, 1)


def assert_prompt_cache_equals_per_row_prefill(make, model, examples, sizes):
    """Generation from each group's prompt prefilled once (its cache and rope offsets repeated per row)
    equals generation with every row's prompt prefilled: the same greedy tokens, logits to 1e-5."""
    model.eval()
    cached, cached_logits = greedy_logits({"prompt_cache": True}, make, model, examples, sizes)
    plain, plain_logits = greedy_logits({"prompt_cache": False}, make, model, examples, sizes)
    assert torch.equal(cached, plain)
    torch.testing.assert_close(cached_logits, plain_logits, atol=1e-5, rtol=0)
    _, shifted = greedy_logits({"prompt_cache": True}, make, model, examples, sizes, shift_rope=1)
    assert (shifted - plain_logits).abs().max() > 1e-4  # a position off by one fails the 1e-5 check by far


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_shared_prompt_cache_generates_what_per_row_prefill_does(tok, family):
    examples = [example([img(64, 64)]), example([img(96, 32), img(32, 32, (20, 200, 40))], "Two images?"),
                example([img(32, 64)], "A much longer question about the squares in this picture?")]

    def make(**kw):
        return VLMAdapter(build_processor(tok, family=family), min_pixels=28 * 28, max_pixels=84 * 84, **kw)
    assert_prompt_cache_equals_per_row_prefill(make, build_tiny_vlm(tok, seed=0, family=family), examples, [3, 1, 2])


@pytest.mark.parametrize("attention,window", [("eager", None), ("sdpa", 8), ("eager", 8)])
def test_shared_prompt_cache_under_eager_attention_and_a_sliding_window(tok, attention, window):
    """The group's cache under eager attention (an additive mask over the repeated cache) and with a
    sliding window on the second layer (8 tokens, shorter than every prompt): what per-row prefill gives."""
    overrides = {} if window is None else dict(use_sliding_window=True, sliding_window=window, max_window_layers=1)
    model = build_tiny_vlm(tok, seed=0, attn_implementation=attention, text_overrides=overrides)
    assert model.config.get_text_config()._attn_implementation == attention
    examples = [example([img(64, 64)]), example([img(96, 32), img(32, 32, (20, 200, 40))], "Two images?")]

    def make(**kw):
        return VLMAdapter(build_processor(tok), min_pixels=28 * 28, max_pixels=84 * 84, **kw)
    assert_prompt_cache_equals_per_row_prefill(make, model, examples, [2, 3])
