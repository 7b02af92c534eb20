"""Train the tiny VLM a few steps on this many processes; every rank saves its parameters, so the
test can check that DDP kept them identical (the vision tower's gradients, computed once per group
outside the DDP forward, must be all-reduced too)."""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT))

from mmrl import vlm  # noqa: E402
from mmrl.config import load_config  # noqa: E402
from mmrl.core.trainer import end_processes, make_accelerator, train  # noqa: E402
from mmrl.vlm.data import load_image_examples  # noqa: E402


def main(out_dir: str):
    cfg = load_config(ROOT / "configs" / "tiny_vlm_grpo.yaml", [
        f"output_dir={out_dir}/run", "trainer.max_steps=3", "sft.steps=40", "trainer.prompts_per_step=4",
        "rollout.group_size=4", "rollout.max_new_tokens=10", "trainer.save_every=0", "trainer.save_hf_model=false",
        "data.synthetic.num_examples=16", "optim.lr=1e-2"])
    accelerator = make_accelerator(cfg)
    model, adapter = vlm.build(cfg)
    examples, _ = load_image_examples(cfg.data)
    train(cfg, adapter, model, examples, accelerator=accelerator)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
               Path(out_dir) / f"rank{accelerator.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
    end_processes()
