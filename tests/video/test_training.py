"""scripts/train_video.py end to end on tiny Qwen2.5-VL models and generated mp4 clips: exact resume
with the augmentation's replay buffer, TW-GRPO on video multiple choice, the real-size recipes on a
local checkpoint, and the learning demos (slow)."""
import json
import sys

import pytest

from tests.integration.helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import train_video  # noqa: E402

FAST = ["sft.steps=5", "trainer.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8",
        "trainer.log_every=1000", "data.synthetic.num_examples=16"]


def run(config, output_dir, *overrides):
    return train_video.main(["--config", str(ROOT / "configs" / config), *FAST, f"output_dir={output_dir}",
                             f"data.synthetic.video_dir={output_dir.parent / 'videos'}", *overrides])


def test_reggrpo_with_augmentation_resumes_exactly(tmp_path):
    """The replay buffer is checkpointed: 2 + 2 resumed steps equal 4 straight ones, augmentation
    included (hints, noisy frames) and the difficulty it computes."""
    over = ["trainer.save_every=2", "augmentation.window=8", "sft.steps=100", "rollout.max_new_tokens=28"]
    full = run("tiny_video_reggrpo.yaml", tmp_path / "a", "trainer.max_steps=4", *over)
    run("tiny_video_reggrpo.yaml", tmp_path / "b", "trainer.max_steps=2", *over)
    resumed = run("tiny_video_reggrpo.yaml", tmp_path / "b", "trainer.max_steps=4", "resume_from=latest", *over)
    keys = ("loss/total", "reward/mean", "augment/difficulty_mean", "augment/hinted_groups", "augment/noised_groups")
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in full.history]
    assert sum(r["augment/hinted_groups"] + r["augment/noised_groups"] for r in full.history) > 0
    assert full.history[-1]["data/skipped"] == 0 and "reg_grpo/error" in full.history[-1]


def test_tw_grpo_on_video_multiple_choice(tmp_path):
    """TW-GRPO through the shared token weighting and the soft multi-choice reward, with
    question-answer inversion turning single-choice clips into multi-answer ones."""
    log = run("tiny_video_grpo.yaml", tmp_path / "run", "trainer.max_steps=2", "data.synthetic.multiple_choice=true",
              "data.qa_inversion=0.5", "algorithm.token_weighting=tw_grpo", "algorithm.token_weighting_params={alpha: 1.7}",
              "rewards=[{name: accuracy_choice_soft}, {name: format, weight: 0.5}]", "algorithm.aggregation=token-mean")
    last = log.history[-1]
    assert last["tw_grpo/weight_max"] > 1.0 and "reward/accuracy_choice_soft/mean" in last


@pytest.mark.parametrize("recipe", ["video_reggrpo_qwen25vl_7b.yaml", "video_twgrpo_qwen25vl_7b.yaml"])
def test_real_size_recipe_on_a_local_checkpoint(tmp_path, recipe):
    """The shipped recipes as they are, on a tiny checkpoint and a video jsonl (with a corrupt clip)."""
    from mmrl.vlm.tiny import save_tiny_vlm
    from video.synthetic import first_colour

    ckpt = save_tiny_vlm(tmp_path / "ckpt")
    rows = first_colour(2, seed=0, video_dir=tmp_path / "clips", multiple_choice=True)
    (tmp_path / "broken.mp4").write_text("not a video")
    rows.append({**rows[0], "video": "broken.mp4"})
    lines = [{"video": r["video"], "problem": r["question"], "options": r["options"], "answer": r["answer"],
              "solution": r["solution"]} for r in rows]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    log = train_video.main(["--config", str(ROOT / "configs" / recipe), f"model.name_or_path={ckpt}",
                            f"data.source={tmp_path / 'train.jsonl'}", f"output_dir={tmp_path / 'run'}",
                            "model.dtype=float32", "trainer.max_steps=1", "trainer.prompts_per_step=2",
                            "trainer.gradient_accumulation_steps=2", "rollout.group_size=2", "rollout.max_new_tokens=6",
                            "model.video.min_pixels=3136", "model.video.max_pixels=3136"])
    assert log.history[-1]["data/skipped"] == 1
    assert (tmp_path / "run" / "checkpoints" / "step_000001" / "model").exists()


def accuracy_gain(history, key):
    acc = [r[key] for r in history]
    k = len(acc) // 5
    return sum(acc[:k]) / k, sum(acc[-k:]) / k


@pytest.mark.slow
@pytest.mark.parametrize("config,key,steps", [
    ("tiny_video_grpo.yaml", "reward/accuracy_task/mean", 300),
    # Reg-GRPO trains on the augmented prompts (hinted / noised) that replace the originals: their
    # accuracy is what its update raises. Over the first 100 steps: 0.178 -> 0.450 (default threads),
    # 0.17 -> 0.48 (OMP_NUM_THREADS=1); seeds 1 and 2: 0.22 -> 0.54 and 0.52. The unaugmented prompts'
    # accuracy is not robust (README: it rose on seed 0 only), so it is not asserted.
    ("tiny_video_reggrpo.yaml", "reward/accuracy_task/mean", 100)])
def test_tiny_video_demos_raise_accuracy(tmp_path, config, key, steps):
    """The shipped demo recipes: accuracy (first vs last 20% of RL steps) rises by >= 0.2."""
    log = train_video.main(["--config", str(ROOT / "configs" / config), f"output_dir={tmp_path}",
                            "trainer.save_every=0", f"trainer.max_steps={steps}"])
    first, last = accuracy_gain(log.history, key)
    assert last - first >= 0.2, (first, last)
