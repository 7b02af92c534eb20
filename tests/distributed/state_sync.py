"""Train a few steps with each of several stateful methods on this many processes (one launch, one
run after the other); every rank saves each run's AlgorithmState (sampler + estimator state) and the
steps' global advantages as OUT_DIR/METHOD/rankR.pt.

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/distributed/state_sync.py OUT_DIR spo,bnpo
"""
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from mmrl.config import load_config
from mmrl.core import trainer
from mmrl.data import load_examples
from mmrl.models.loading import load_causal_lm
from mmrl.text import CausalLMAdapter

ROOT = Path(__file__).parents[2]
SMALL = {"spo": ["rollout.group_size=1", "trainer.prompts_per_step=8"],
         "knapsack": ["sampler.params.min_history=2", "sampler.params.max_n=8"]}


def main(out_dir: str, methods: str):
    for method in methods.split(","):
        run(Path(out_dir) / method, method)


def run(out_dir: Path, method: str):
    out_dir.mkdir(parents=True, exist_ok=True)
    captured = {}
    original_init = trainer.AlgorithmState.__init__

    def capture(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        captured["state"] = self

    original_compute = trainer.compute_advantages

    def record(*args, **kwargs):
        adv = original_compute(*args, **kwargs)
        captured.setdefault("advantages", []).append(adv.clone())
        return adv

    trainer.AlgorithmState.__init__ = capture
    trainer.compute_advantages = record
    try:
        train(out_dir, method)
    finally:
        trainer.AlgorithmState.__init__, trainer.compute_advantages = original_init, original_compute
    rank = PartialState().process_index
    torch.save({"state": captured["state"].state_dict(), "advantages": captured["advantages"]}, out_dir / f"rank{rank}.pt")


def train(out_dir: Path, method: str):
    cfg = load_config([ROOT / "configs" / "tiny_text_grpo.yaml", ROOT / "configs" / "methods" / f"{method}.yaml"],
                      ["sft.steps=3", "trainer.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=6",
                       "data.synthetic.num_examples=6", "trainer.max_steps=3", "trainer.save_every=0",
                       "trainer.log_every=1000", f"output_dir={out_dir}/run", *SMALL.get(method, [])])
    model, tok = load_causal_lm(cfg.model, seed=cfg.trainer.seed)
    trainer.train(cfg, CausalLMAdapter(tok), model, load_examples(cfg.data))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    trainer.end_processes()
