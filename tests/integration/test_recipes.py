"""The real-model recipe runs as shipped, on a tiny checkpoint loaded through from_pretrained."""
import json

from mmrl.config import load_config
from mmrl.core.trainer import train
from mmrl.data import load_examples
from mmrl.models.loading import load_causal_lm, prepare_for_training
from mmrl.models.tiny import save_tiny
from mmrl.text import CausalLMAdapter

from .helpers import ROOT


def test_text_math_recipe_on_a_local_checkpoint(tmp_path):
    ckpt = save_tiny(tmp_path / "tiny-ckpt")
    cfg = load_config(ROOT / "configs" / "text_math_grpo.yaml", [
        f"model.name_or_path={ckpt}", f"output_dir={tmp_path / 'run'}", "trainer.max_steps=1",
        "trainer.prompts_per_step=2", "trainer.gradient_accumulation_steps=2", "rollout.group_size=2",
        "rollout.max_new_tokens=8", "optim.warmup_steps=0"])
    model, tok = load_causal_lm(cfg.model)
    model = prepare_for_training(model, cfg.model)
    adapter = CausalLMAdapter(tok, max_prompt_length=cfg.data.max_prompt_length, temperature=cfg.rollout.temperature)
    train(cfg, adapter, model, load_examples(cfg.data))
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert {"reward/accuracy_math/mean", "reward/format/mean", "reward/length_penalty/mean", "kl/mean"} <= set(record)
    assert (tmp_path / "run" / "checkpoints" / "step_000001" / "model" / "config.json").exists()


def test_eval_math_recipe_on_a_local_checkpoint(tmp_path):
    import sys
    sys.path.insert(0, str(ROOT / "scripts"))
    import eval as eval_script

    ckpt = save_tiny(tmp_path / "tiny-ckpt")
    result = eval_script.main(["--config", str(ROOT / "configs" / "eval_math.yaml"), f"model.name_or_path={ckpt}",
                               f"output_dir={tmp_path / 'eval'}", "eval.max_new_tokens=4",
                               *[f"eval.benchmarks.{i}.limit=2" for i in range(5)]])
    assert list(result.benchmarks) == ["gsm8k", "math500", "aime24", "aime25", "amc23"]
    assert result.benchmarks["aime24"]["samples"] == 16 and "maj@16" in result.benchmarks["aime24"]
    assert result.benchmarks["gsm8k"]["samples"] == 4 and "pass@4" in result.average
    assert (tmp_path / "eval" / "eval.json").exists()
