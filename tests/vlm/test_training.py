"""scripts/train_vlm.py end to end on tiny Qwen2.5-VL models: smoke, exact resume, local checkpoint,
frozen vision tower, and the learning demo."""
import json
import sys

import pytest
import torch

from tests.integration.helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import train_vlm  # noqa: E402

CONFIG = str(ROOT / "configs" / "tiny_vlm_grpo.yaml")
FAST = ["sft.steps=5", "trainer.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=6",
        "trainer.log_every=1000", "data.synthetic.num_examples=16"]


def run(output_dir, *overrides):
    return train_vlm.main(["--config", CONFIG, *FAST, f"output_dir={output_dir}", *overrides])


def test_vlm_run_resumes_exactly(tmp_path):
    full = run(tmp_path / "a", "trainer.max_steps=4", "trainer.save_every=2")
    resumed = run(tmp_path / "b", "trainer.max_steps=2", "trainer.save_every=2")
    resumed = run(tmp_path / "b", "trainer.max_steps=4", "trainer.save_every=2", "resume_from=latest")
    keys = ("loss/total", "reward/mean", "optim/grad_norm")
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in full.history]
    assert full.history[-1]["data/skipped"] == 0


def test_local_checkpoint_with_frozen_tower(tmp_path):
    from mmrl.vlm.tiny import save_tiny_vlm
    from transformers import AutoModelForImageTextToText

    ckpt = save_tiny_vlm(tmp_path / "ckpt")
    run(tmp_path / "run", f"model.name_or_path={ckpt}", "trainer.max_steps=2", "model.vision.freeze_tower=true")
    before = AutoModelForImageTextToText.from_pretrained(ckpt).state_dict()
    after = AutoModelForImageTextToText.from_pretrained(tmp_path / "run" / "checkpoints" / "step_000002" / "model").state_dict()
    visual = [k for k in before if ".visual." in k or k.startswith("visual.")]
    assert visual and all(torch.equal(before[k], after[k]) for k in visual)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in visual)


def test_ton_recipe_runs_and_logs_the_skip_ratio(tmp_path):
    log = train_vlm.main(["--config", str(ROOT / "configs" / "tiny_vlm_ton.yaml"), *FAST, "rollout.max_new_tokens=12",
                          f"output_dir={tmp_path}", "trainer.max_steps=2"])
    assert {"reward/empty_think/mean", "reward/accuracy_task/mean", "completion_length/mean"} <= set(log.history[-1])


@pytest.mark.parametrize("method", ["grpo", "ton", "vas", "twgrpo"])
def test_real_size_recipe_on_a_local_checkpoint(tmp_path, method):
    """configs/vlm_<method>_qwen25vl_7b.yaml as shipped, on a tiny checkpoint and an image jsonl."""
    from PIL import Image
    from mmrl.vlm.tiny import save_tiny_vlm

    ckpt = save_tiny_vlm(tmp_path / "ckpt")
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (56, 56), colour).save(tmp_path / f"{i}.png")
    rows = [{"images": [f"{i}.png"], "problem": "What is the colour of the square?", "options": ["red", "blue", "green"],
             "answer": "AB"[i], "solution": f"<think>look</think><answer>{'AB'[i]}</answer>"} for i in range(2)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    log = train_vlm.main(["--config", str(ROOT / "configs" / f"vlm_{method}_qwen25vl_7b.yaml"),
                          f"model.name_or_path={ckpt}", f"data.source={tmp_path / 'train.jsonl'}",
                          f"output_dir={tmp_path / 'run'}", "model.dtype=float32", "trainer.max_steps=1",
                          "trainer.prompts_per_step=2", "trainer.gradient_accumulation_steps=2",
                          "rollout.group_size=2", "rollout.max_new_tokens=6", "sft.steps=2", "sft.batch_size=2",
                          "model.vision.min_pixels=3136", "model.vision.max_pixels=3136"])
    assert log.history[-1]["step"] == 1 and (tmp_path / "run" / "checkpoints" / "step_000001" / "model").exists()


@pytest.mark.slow
def test_tiny_vlm_demo_raises_accuracy(tmp_path):
    """The shipped demo recipe: accuracy (first vs last 20% of RL steps) rises by >= 0.2."""
    log = train_vlm.main(["--config", CONFIG, f"output_dir={tmp_path}", "trainer.save_every=0"])
    acc = [r["reward/accuracy_task/mean"] for r in log.history]
    k = len(acc) // 5
    first, last = sum(acc[:k]) / k, sum(acc[-k:]) / k
    assert last - first >= 0.2, (first, last)
    (tmp_path / "summary.json").write_text(json.dumps({"first": first, "last": last}))
