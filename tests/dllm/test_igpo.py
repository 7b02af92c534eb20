"""IGPO: chunking and hint layout (hand-checked), the entropy filter on hint tokens, and the rescue of
an all-wrong group on the tiny model."""
import random

import torch
from accelerate import Accelerator

from dllm.config import InpaintingConfig
from dllm.igpo import chunk_spans, entropy_filtered_mask, hint_canvas, inpaint
from mmrl.config import load_config


class FixedRng(random.Random):
    """randint returns the given chunk sizes in turn; sample/uniform as random.Random."""
    def __init__(self, sizes):
        super().__init__(0)
        self.sizes = list(sizes)

    def randint(self, a, b):
        return self.sizes.pop(0)


def test_chunks_drop_a_short_tail():
    assert chunk_spans(12, 3, 5, FixedRng([4, 5, 3])) == [(0, 4), (4, 9), (9, 12)]
    assert chunk_spans(11, 3, 5, FixedRng([4, 5, 3])) == [(0, 4), (4, 9)]  # tail of 2 < min_chunk dropped


def test_hint_layout_scales_offsets_and_keeps_the_tail_free():
    cfg = InpaintingConfig(min_chunk=2, max_chunk=2, free_tail=4, max_spacing=100, reveal_last_chunk=True)
    reference = list(range(100, 108))  # 8 tokens -> chunks (0,2) (2,4) (4,6) (6,8)
    # gen_length 20: usable 16, factor clamp(16 / 8, 1, 1.5) = 1.5; eta = 1 reveals all
    canvas = hint_canvas(reference, 20, 1.0, cfg, FixedRng([2] * 4))
    assert canvas[:8] == reference and canvas[8:] == [-1] * 12  # contiguous chunks: no gaps to scale
    cfg_hidden = InpaintingConfig(min_chunk=2, max_chunk=2, free_tail=4, reveal_last_chunk=False)
    canvas = hint_canvas(reference, 20, 1.0, cfg_hidden, FixedRng([2] * 4))
    assert 106 not in canvas and 107 not in canvas and canvas[:6] == reference[:6]  # last chunk hidden
    rng = FixedRng([2] * 4)
    rng.sample = lambda population, k: [1]
    # int(4 * 0.25) = 1 chunk hidden, chunk 1: its 2 tokens become a gap of floor(2 * 1.5) = 3
    canvas = hint_canvas(reference, 20, 0.75, cfg, rng)
    assert canvas[:2] == [100, 101] and canvas[2:5] == [-1, -1, -1] and canvas[5:7] == [104, 105]
    assert canvas[7:9] == [106, 107] and canvas[16:] == [-1] * 4


def test_entropy_filter_keeps_the_top_fifth_of_hint_tokens():
    hint = torch.tensor([[False, True, True, True, True, True, False, False, False, False, False, True]])
    entropy = torch.tensor([[9.0, 0.1, 0.5, 0.3, 0.2, 0.4, 9.0, 9.0, 9.0, 9.0, 9.0, 0.05]])
    keep = entropy_filtered_mask(hint, entropy, 0.2)  # 6 hint tokens: max(1, floor(1.2)) = 1 kept: position 2
    assert keep.tolist() == [[1, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0]]


def test_all_wrong_group_is_rescued_on_the_tiny_model():
    import dllm
    cfg = load_config(None, ["model.modality=dllm", "model.name_or_path=tiny", "rollout.max_new_tokens=16",
                             "model.diffusion.block_length=8", "model.diffusion.steps=8", "rollout.group_size=4",
                             "inpainting.enabled=true", "inpainting.min_chunk=2", "inpainting.max_chunk=3",
                             "inpainting.free_tail=2", "rewards=[{name: format, params: {pattern: '.*'}}]"])
    model, adapter = dllm.build(cfg, training=False)
    examples = [{"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "answer": "5",
                 "solution": "<answer>5</answer>"},
                {"prompt": [{"role": "user", "content": "What is 1 + 1?"}], "answer": "2", "solution": ""}]
    batch = adapter.generate(model, examples, 4, cfg.rollout)
    batch.rewards, batch.reward_names = torch.zeros(8, 1), ["format"]  # both groups all wrong
    batch.example_index = torch.tensor([0] * 4 + [1] * 4)
    before = batch.completion_ids.clone()
    out, stats = inpaint(cfg, Accelerator(cpu=True), adapter, model, batch, step=0)
    # the second group has no reference reasoning: not rescued. The first: floor(0.5 * 4) = 2 rows replaced
    assert stats == {"igpo/all_wrong_groups": 2, "igpo/rescued_groups": 1, "igpo/replaced_samples": 2,
                     "igpo/original/format/mean": 0.0}  # the policy's own samples (the batch's mean is now 0.25)
    assert out.rewards[:2, 0].tolist() == [1.0, 1.0] and out.rewards[2:, 0].tolist() == [0.0] * 6
    assert torch.equal(out.completion_ids[2:], before[2:]) and out.group_ids.tolist() == batch.group_ids.tolist()
    assert out.example_index.tolist() == [0] * 4 + [1] * 4
    hints = out.extras["hint_mask"][:2]
    assert hints.any() and not out.extras["hint_mask"][2:].any()
    # hint tokens outside the top-entropy fifth leave the loss; other tokens keep the answer scope's mask
    assert (out.loss_mask[:2][hints] == 0).any()
    assert torch.equal(out.loss_mask[:2][~hints], out.completion_mask[:2][~hints])


def _all_wrong_group(extra=()):
    """A tiny model and one all-wrong group of 4 whose prompt has a reference solution."""
    import dllm
    cfg = load_config(None, ["model.modality=dllm", "model.name_or_path=tiny", "rollout.max_new_tokens=16",
                             "model.diffusion.block_length=8", "model.diffusion.steps=8", "rollout.group_size=4",
                             "inpainting.enabled=true", "inpainting.min_chunk=2", "inpainting.max_chunk=3",
                             "inpainting.free_tail=2", "rewards=[{name: format, params: {pattern: '.*'}}]", *extra])
    model, adapter = dllm.build(cfg, training=False)
    examples = [{"prompt": [{"role": "user", "content": "What is 2 + 3?"}], "answer": "5",
                 "solution": "<answer>5</answer> because 2 + 3 = 5"}]
    batch = adapter.generate(model, examples, 4, cfg.rollout)
    batch.rewards, batch.reward_names = torch.zeros(4, 1), ["format"]
    batch.example_index = torch.zeros(4, dtype=torch.long)
    return cfg, model, adapter, batch


def _with_redo_rewards(monkeypatch, adapter, rewards):
    """Inpainted samples get `rewards` (their first column); returns the dict that receives them."""
    import dllm.igpo

    seen = {}
    generate = adapter.generate

    def recording(*args, **kwargs):
        seen["redo"] = generate(*args, **kwargs)
        return seen["redo"]

    def scored(reward_cfgs, batch):
        batch.rewards, batch.reward_names = torch.tensor(rewards)[:, None], ["format"]
        return 0

    monkeypatch.setattr(adapter, "generate", recording)
    monkeypatch.setattr(dllm.igpo, "score_batch", scored)
    return seen


def test_only_correct_inpainted_samples_replace_and_which_ones_is_random(monkeypatch):
    """The reward rejects inpainted samples 1 and 3: with lambda = 1 only samples 0 and 2 replace (the
    group's first two slots); with lambda = 0.25 one of them, drawn at random (both over 12 steps;
    the first correct one every time before)."""
    cfg, model, adapter, batch = _all_wrong_group(["inpainting.max_replace_fraction=1.0"])
    seen = _with_redo_rewards(monkeypatch, adapter, [1.0, 0.0, 1.0, 0.0])
    out, stats = inpaint(cfg, Accelerator(cpu=True), adapter, model, batch, step=0)
    assert stats["igpo/replaced_samples"] == 2 and stats["igpo/rescued_groups"] == 1
    assert torch.equal(out.completion_ids[:2], seen["redo"].completion_ids[[0, 2]])
    assert out.rewards[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0]
    cfg.inpainting.max_replace_fraction = 0.25
    picked = set()
    for step in range(12):
        out, stats = inpaint(cfg, Accelerator(cpu=True), adapter, model, batch.select(torch.arange(4)), step=step)
        assert stats["igpo/replaced_samples"] == 1
        redo = seen["redo"].completion_ids
        picked |= {j for j in (0, 2) if torch.equal(out.completion_ids[0], redo[j])}
    assert picked == {0, 2}


def test_official_loss_scope_counts_every_canvas_position(monkeypatch):
    """`loss_scope: canvas` (trainer_igpo.py): every row's GSPO ratio averages over all 16 canvas
    positions (ratio_mask), and the loss counts every position, EOS padding included, except the hint
    tokens the entropy filter drops, wherever they sit; `answer` keeps the tokens up to the first EOS."""
    cfg, model, adapter, batch = _all_wrong_group(["inpainting.loss_scope=canvas", "inpainting.max_replace_fraction=1.0"])
    _with_redo_rewards(monkeypatch, adapter, [1.0, 1.0, 1.0, 1.0])
    out, stats = inpaint(cfg, Accelerator(cpu=True), adapter, model, batch, step=0)
    assert stats["igpo/replaced_samples"] == 4
    assert out.ratio_mask.tolist() == [[1] * 16] * 4
    hints = out.extras["hint_mask"]
    assert hints.any()
    assert (out.loss_mask[~hints] == 1).all() and (out.loss_mask[hints] == 0).any()
    for r in range(4):  # max(1, floor(0.2 n)) of each row's n hint tokens train
        n = int(hints[r].sum())
        assert int(out.loss_mask[r][hints[r]].sum()) == max(1, int(0.2 * n))
    cfg.inpainting.loss_scope = "answer"
    _, _, _, batch = _all_wrong_group()
    out, _ = inpaint(cfg, Accelerator(cpu=True), adapter, model, batch, step=0)
    assert out.ratio_mask is None
    assert (out.loss_mask <= out.completion_mask).all()
