"""Group-relative RL on a video LLM (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) with video prompts: GRPO,
Reg-GRPO with difficulty-aware augmentation (DeepVideo-R1), TW-GRPO.

    accelerate launch scripts/train_video.py --config configs/tiny_video_reggrpo.yaml
    accelerate launch --num_processes 8 scripts/train_video.py --config configs/video_reggrpo_qwen25vl_7b.yaml \\
        model.name_or_path=/path/to/Qwen2.5-VL-7B-Instruct data.source=/path/to/train.jsonl
"""
from mmrl.config import config_from_cli
from mmrl.core.run_dir import claim_output_dir
from mmrl.core.trainer import end_processes
from mmrl.launch import train_family


def main(argv=None):
    cfg = config_from_cli(argv, __doc__, modality="video")
    claim_output_dir(cfg, exit_on_error=True)  # refused or unwritable: before the model is built
    return train_family(cfg)


if __name__ == "__main__":
    main()
    end_processes()
