"""DeepVideo-R1 difficulty-aware augmentation: difficulty against the replay buffer, the maps to hint
length and noise level, hint extraction, and one augmentation pass with a scripted adapter."""
import pytest
import torch
from accelerate import Accelerator

from mmrl.config import load_config
from mmrl.core.methods.augmentation import (DifficultyAugmentation, augment, hint_prefix, reasoning_of, with_user_text)
from mmrl.core.batch import RolloutBatch


def test_difficulty_is_buffer_mean_minus_group_mean():
    aug = DifficultyAugmentation(window=3)
    assert aug.difficulties([0.2, 0.9]) == [0.0, 0.0]  # empty buffer: no reference yet
    aug.push([1.0, 0.0, 0.5])
    assert aug.difficulties([0.25, 1.0]) == pytest.approx([0.25, -0.5])  # reference 0.5
    aug.push([1.0, 1.0])  # window 3 keeps [0.5, 1.0, 1.0]: reference 5/6
    assert aug.difficulties([0.5]) == pytest.approx([5 / 6 - 0.5])
    restored = DifficultyAugmentation(window=3)
    restored.load_state_dict(aug.state_dict())
    assert list(restored.buffer) == [0.5, 1.0, 1.0]


def test_float_rounding_is_no_difficulty():
    """Rewards equal to the buffer's, averaged in float32 (0.1 -> 0.10000000149): a gap of 1.5e-9, which
    with min_gap 0 re-rolled the group with noise sigma ~ 1e-9 before; now no augmentation."""
    aug = DifficultyAugmentation(window=3, min_gap=0.0)
    aug.push([0.1, 0.1, 0.1])
    mean = torch.tensor([0.1, 0.1]).mean().item()
    assert aug.difficulties([mean]) == [0.0]
    assert aug.hint_fraction(0.0) == 0.0 and aug.noise_sigma(0.0) == 0.0
    assert aug.difficulties([0.1 + 2e-6]) == pytest.approx([-2e-6])  # a real gap stays


def test_hint_and_noise_maps_are_linear_and_capped():
    aug = DifficultyAugmentation(hint_scale=1.0, hint_max=0.8, noise_scale=0.3, noise_max=0.2, min_gap=0.1)
    assert aug.hint_fraction(0.25) == 0.25 and aug.hint_fraction(0.95) == 0.8
    assert aug.hint_fraction(0.05) == 0.0 and aug.hint_fraction(-0.5) == 0.0  # within min_gap / easier
    assert aug.noise_sigma(-0.5) == pytest.approx(0.15) and aug.noise_sigma(-1.0) == 0.2
    assert aug.noise_sigma(-0.05) == 0.0 and aug.noise_sigma(0.5) == 0.0


def test_hint_text_helpers():
    assert reasoning_of("<think> first red\nthen blue </think><answer>red</answer>") == "first red then blue"
    assert reasoning_of("red is first so <answer>red</answer>") == "red is first so"
    assert hint_prefix("a b c d e", 0.25) == "a b"  # ceil(1.25) words
    assert hint_prefix("a b c d e", 0.0) == "" and hint_prefix("", 0.5) == ""
    text = with_user_text({"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "Q?"}]}, "Hint: x")
    assert text["prompt"][1]["content"] == "Q?\nHint: x"
    video = {"prompt": [{"role": "user", "content": [{"type": "video", "video": "v.mp4"}, {"type": "text", "text": "Q?"}]}]}
    out = with_user_text(video, "Hint: y")
    assert out["prompt"][0]["content"][1]["text"] == "Q?\nHint: y" and video["prompt"][0]["content"][1]["text"] == "Q?"


class Scripted:
    """Answers from the prompt text: a hinted prompt is solved, an answer-conditioned one gives a
    reasoning 'first <answer> then x', anything else answers 'wrong'. Records what it was asked."""
    supports_frame_noise = True

    def __init__(self):
        self.calls = []

    def generate(self, model, examples, group_size, rollout_cfg):
        sizes = [group_size] * len(examples) if isinstance(group_size, int) else list(group_size)
        self.calls.append([e["prompt"][-1]["content"] for e in examples])
        texts = []
        for e, n in zip(examples, sizes):
            question = e["prompt"][-1]["content"]
            if "correct answer is" in question:
                texts += [f"<think>first {e['answer']} then x</think><answer>{e['answer']}</answer>"] * n
            elif "Hint:" in question:
                texts += [f"<answer>{e['answer']}</answer>"] * n
            else:
                texts += ["<answer>wrong</answer>"] * n
        rows = len(texts)
        return RolloutBatch(prompt_ids=torch.ones(rows, 2, dtype=torch.long), prompt_mask=torch.ones(rows, 2, dtype=torch.long),
                            completion_ids=torch.ones(rows, 3, dtype=torch.long),
                            completion_mask=torch.ones(rows, 3, dtype=torch.long),
                            group_ids=torch.arange(len(examples)).repeat_interleave(torch.tensor(sizes)),
                            examples=[e for e, n in zip(examples, sizes) for _ in range(n)], completions_text=texts)


def test_augment_hints_hard_groups_and_noises_easy_ones():
    cfg = load_config(None, ["rewards=[{name: accuracy_task}]", "augmentation.name=difficulty",
                             "augmentation.hint_samples=2", "rollout.group_size=2"])
    examples = [{"prompt": [{"role": "user", "content": f"Q{i}"}], "answer": a} for i, a in enumerate(["red", "blue"])]
    adapter = Scripted()
    batch = adapter.generate(None, examples, 2, cfg.rollout)
    batch.rewards, batch.reward_names = torch.tensor([[0.0], [0.0], [1.0], [1.0]]), ["accuracy_task"]
    batch.example_index = torch.tensor([7, 7, 9, 9])
    aug = DifficultyAugmentation(window=4, hint_samples=2)
    aug.push([0.5, 0.5])  # reference 0.5: group 0 (mean 0) is harder by 0.5, group 1 (mean 1) easier by 0.5
    out, stats = augment(cfg, Accelerator(cpu=True), adapter, torch.nn.Linear(1, 1), batch, aug, step=3)
    assert stats["augment/hinted_groups"] == 1 and stats["augment/noised_groups"] == 1
    assert stats["augment/original/accuracy_task/mean"] == 0.5 and list(aug.buffer) == [0.5, 0.5, 0.0, 1.0]
    assert adapter.calls[1] == ["Q0\n(The correct answer is red.)"]  # answer-conditioned hint draw
    hinted = out.examples[0]["prompt"][-1]["content"]
    assert hinted == "Q0\nHint: first red"  # ceil(0.5 * 4 words) of "first red then x"
    assert out.examples[2]["video_noise"]["sigma"] == pytest.approx(0.15)  # 0.3 * 0.5
    assert out.rewards[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0]  # hinted group now solved; noised one re-drawn
    assert out.example_index.tolist() == [7, 7, 9, 9] and out.group_ids.tolist() == [0, 0, 1, 1]
