from pathlib import Path

from mmrl.config import load_config
from mmrl.core.trainer import train
from mmrl.data import load_examples
from mmrl import text

ROOT = Path(__file__).parents[2]
TINY = ROOT / "configs" / "tiny_text_grpo.yaml"
FAST = ["sft.steps=5", "trainer.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=6",
        "trainer.log_every=1000", "data.synthetic.num_examples=32"]


METHODS = sorted(p.stem for p in (ROOT / "configs" / "methods").glob("*.yaml"))


def run_text(output_dir, *overrides, method: str | None = None):
    """Train the tiny text recipe (with the method overlay configs/methods/<method>.yaml) briefly."""
    paths = [TINY] + ([ROOT / "configs" / "methods" / f"{method}.yaml"] if method else [])
    cfg = load_config(paths, [*FAST, f"output_dir={output_dir}", *overrides])
    model, adapter = text.build(cfg)
    log = train(cfg, adapter, model, load_examples(cfg.data))
    return log, model
