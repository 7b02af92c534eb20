"""The eval script on a tiny random model, and evaluation during training."""
import json
import sys
from pathlib import Path

import pytest

from mmrl.config import ConfigError
from tests.integration.helpers import ROOT, run_text

sys.path.insert(0, str(ROOT / "scripts"))
import eval as eval_script  # noqa: E402


def test_eval_script_on_ten_gsm8k_rows_writes_table_json_and_resumes(tmp_path, capsys):
    args = ["--config", str(ROOT / "configs" / "eval_math.yaml"), "model.name_or_path=tiny",
            "model.dtype=float32", "model.attn_implementation=null", f"output_dir={tmp_path}",
            "eval.benchmarks=[{name: gsm8k, limit: 10}]", "eval.num_samples=2", "eval.ks=[1,2]",
            "eval.temperature=1.0", "eval.max_new_tokens=8", "eval.batch_size=4"]
    first = eval_script.main(args)
    table = capsys.readouterr().out
    assert "| gsm8k | 10 | 2 |" in table and "pass@2" in table
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["benchmarks"]["gsm8k"]["problems"] == 10
    assert set(saved["benchmarks"]["gsm8k"]) >= {"pass@1", "pass@2", "maj@2", "mean@2", "no_answer", "length"}
    (shard,) = (tmp_path / "eval_cache").glob("gsm8k-*.rank0.jsonl")
    assert len(shard.read_text().splitlines()) == 20
    stamp = shard.stat().st_mtime_ns
    second = eval_script.main(args)  # everything cached: nothing generated, same numbers
    assert shard.stat().st_mtime_ns == stamp and second.benchmarks == first.benchmarks


@pytest.fixture
def addition_bench(tmp_path):
    path = tmp_path / "add.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                            for a, b in [(1, 2), (3, 4), (5, 0), (2, 2)]))
    return path


def test_eval_during_training_logs_metrics_and_leaves_training_unchanged(tmp_path, addition_bench):
    bench = f"eval.benchmarks=[{{name: add, source: {addition_bench}}}]"
    plain, _ = run_text(tmp_path / "plain", "trainer.max_steps=4")
    with_eval, _ = run_text(tmp_path / "eval", "trainer.max_steps=4", "eval.every=3", bench,
                            "eval.max_new_tokens=6")
    keys = ("loss/total", "reward/mean", "optim/grad_norm")
    assert [[r[k] for k in keys] for r in with_eval.history] == [[r[k] for k in keys] for r in plain.history]
    evals = {r["step"]: r.get("eval/add/pass@1") for r in with_eval.history}
    assert evals[1] is None and evals[2] is None and evals[3] is not None and evals[4] is not None  # every 3 + last
    assert "eval/average/pass@1" in with_eval.history[2]
    assert sorted(p.name for p in (Path(tmp_path) / "eval" / "eval").glob("*.json")) == \
        ["step_000003.json", "step_000004.json"]


def test_vision_benchmarks_through_the_vlm_adapter(tmp_path):
    args = ["--config", str(ROOT / "configs" / "eval_vision.yaml"), "model.name_or_path=tiny", "model.dtype=float32",
            "model.attn_implementation=null", "model.vision.max_pixels=12544", f"output_dir={tmp_path}",
            "eval.benchmarks=[{name: mathvision, limit: 3}, {name: superclevr, limit: 2}]",
            "eval.max_new_tokens=4", "eval.num_samples=2", "eval.ks=[1,2]"]
    result = eval_script.main(args)
    assert result.benchmarks["mathvision"]["problems"] == 3 and result.benchmarks["superclevr"]["problems"] == 2
    with pytest.raises(ConfigError, match="'model.vision' belongs to the vlm model family"):
        eval_script.main([*args, "model.modality=text"])  # the recipe's vision section, in a text run
    text_recipe = tmp_path / "eval_vision_text.yaml"  # the same benchmarks, without the section
    text_recipe.write_text((ROOT / "configs" / "eval_vision.yaml").read_text().replace("  vision: {", "  # vision: {"))
    with pytest.raises(SystemExit, match="vision-language model"):
        eval_script.main(["--config", str(text_recipe), *[a for a in args[2:] if not a.startswith("model.vision")],
                          "model.modality=text"])


def test_shipped_vision_benchmarks_load_with_images_and_options():
    from mmrl.config import load_config
    from mmrl.eval import load_benchmarks

    cfg = load_config(None, ["eval.benchmarks=[{name: mathvision}, {name: superclevr}]"])
    from mmrl.vlm.data import image_examples

    mathvision, superclevr = load_benchmarks(cfg.eval, None, image_examples=image_examples)
    assert len(mathvision.examples) == 304 and len(superclevr.examples) == 248
    mc = next(e for e in mathvision.examples if e["options"])
    image, text = mc["prompt"][0]["content"]
    assert image["type"] == "image" and Path(image["image"]).exists()
    assert text["text"].endswith("\nE. " + mc["options"][4]) and mc["answer"] in "ABCDE"
