"""Co-GRPO on a masked image generator (aMUSEd from a local directory, or a tiny random one): the token
model and a learned inference-schedule policy trained in alternation with group-relative advantages
on image rewards (CLIP score with open_clip, the verifiable colour_layout, or any registered reward).
Prompts come from a text file (data.source: prompts.txt, one a line) or the synthetic colour task.
Saves <output_dir>/samples_before_after.png: images of the first prompts before and after training.

    accelerate launch scripts/train_mdm.py --config configs/tiny_mdm_cogrpo.yaml
    accelerate launch --num_processes 8 scripts/train_mdm.py --config configs/mdm_cogrpo_amused.yaml \\
        model.name_or_path=/path/to/amused-512 data.source=/path/to/prompts.txt
"""
from pathlib import Path

import dllm.image
from dllm.image.adapter import sample_grid, save_grid
from mmrl.config import config_from_cli
from mmrl.core.run_dir import claim_output_dir
from mmrl.core.policy import unwrapped_for_generation
from mmrl.core.trainer import end_processes, make_accelerator, train

GRID_PROMPTS, GRID_PER_PROMPT = 4, 4


def main(argv=None):
    cfg = config_from_cli(argv, __doc__, modality="mdm")
    claim_output_dir(cfg, exit_on_error=True)  # refused or unwritable: before the model is built
    policy, adapter = dllm.image.build(cfg)
    examples, _ = dllm.image.training_examples(cfg, adapter)
    accelerator = make_accelerator(cfg)
    shown = examples[:GRID_PROMPTS]
    before = sample_grid(adapter, policy.to(accelerator.device), shown, GRID_PER_PROMPT, seed=cfg.trainer.seed)
    log = train(cfg, adapter, policy, examples, accelerator=accelerator)
    with unwrapped_for_generation(accelerator, policy) as trained:  # every rank gathers a sharded policy
        after = sample_grid(adapter, trained, shown, GRID_PER_PROMPT, seed=cfg.trainer.seed) \
            if accelerator.is_main_process else None
    if accelerator.is_main_process:
        path = Path(cfg.output_dir) / "samples_before_after.png"
        k = GRID_PER_PROMPT
        save_grid({f"{when} {i + 1} | {adapter.prepare(e)}": images[i * k:(i + 1) * k]
                   for when, images in (("before", before), ("after", after)) for i, e in enumerate(shown)}, path)
        accelerator.print(f"samples before and after training: {path}")
    return log


if __name__ == "__main__":
    main()
    end_processes()
