"""Group-relative RL on a causal LM.

    accelerate launch scripts/train_text.py --config configs/text_math_grpo.yaml \
        model.name_or_path=/path/to/Qwen3-8B output_dir=runs/qwen3-gsm8k
"""
from mmrl.config import config_from_cli
from mmrl.core.run_dir import claim_output_dir
from mmrl.core.trainer import end_processes
from mmrl.launch import train_family


def main(argv=None):
    cfg = config_from_cli(argv, __doc__, modality="text")
    claim_output_dir(cfg, exit_on_error=True)  # refused or unwritable: before the model is built
    return train_family(cfg)


if __name__ == "__main__":
    main()
    end_processes()
