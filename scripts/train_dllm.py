"""Group-relative RL on a masked diffusion LM (LLaDA-8B, Dream-7B, LLaDA2 from a local directory, or a
tiny random one): d1's one-step estimator, GDPO's ELBO estimators and sequence loss, IGPO's inpainting.

    accelerate launch scripts/train_dllm.py --config configs/tiny_dllm_grpo.yaml
    accelerate launch --num_processes 8 scripts/train_dllm.py --config configs/dllm_gdpo_llada8b.yaml \\
        model.name_or_path=/path/to/LLaDA-8B-Instruct
"""
from mmrl.config import config_from_cli
from mmrl.core.run_dir import claim_output_dir
from mmrl.core.trainer import end_processes
from mmrl.launch import train_family


def main(argv=None):
    cfg = config_from_cli(argv, __doc__, modality="dllm")
    claim_output_dir(cfg, exit_on_error=True)  # refused or unwritable: before the model is built
    return train_family(cfg)


if __name__ == "__main__":
    main()
    end_processes()
