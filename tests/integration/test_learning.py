"""The tiny text demo learns: accuracy rises by >= 0.2 between the first and last 20% of steps."""
import pytest

from mmrl.core.metrics import first_last_fraction

from mmrl.config import load_config
from mmrl.core.trainer import train
from mmrl.data import load_examples
from mmrl.models.loading import load_causal_lm
from mmrl.text import CausalLMAdapter

from .helpers import TINY


@pytest.mark.slow
def test_tiny_text_grpo_demo_raises_accuracy(tmp_path):
    cfg = load_config(TINY, [f"output_dir={tmp_path}", "trainer.log_every=1000", "trainer.save_every=0"])
    model, tok = load_causal_lm(cfg.model, seed=cfg.trainer.seed)
    log = train(cfg, CausalLMAdapter(tok, temperature=cfg.rollout.temperature), model, load_examples(cfg.data))
    first, last = first_last_fraction([r["reward/accuracy_math/mean"] for r in log.history])
    print(f"accuracy first 20% {first:.3f} -> last 20% {last:.3f}")
    assert last - first >= 0.2


def test_train_script_smoke(tmp_path):
    import runpy
    train_text_main = runpy.run_path(str(TINY.parents[1] / "scripts" / "train_text.py"))["main"]
    log = train_text_main(["--config", str(TINY), f"output_dir={tmp_path}", "trainer.max_steps=2", "sft.steps=2",
                           "trainer.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4"])
    assert [r["step"] for r in log.history] == [1, 2]
