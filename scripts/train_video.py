"""Group-relative RL on a video LLM (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) with video prompts: GRPO,
Reg-GRPO with difficulty-aware augmentation (DeepVideo-R1), TW-GRPO.

    accelerate launch scripts/train_video.py --config configs/tiny_video_reggrpo.yaml
    accelerate launch --num_processes 8 scripts/train_video.py --config configs/video_reggrpo_qwen25vl_7b.yaml \\
        model.name_or_path=/path/to/Qwen2.5-VL-7B-Instruct data.source=/path/to/train.jsonl
"""
import video
from mmrl.config import config_from_cli
from mmrl.core.run_dir import claim_output_dir
from mmrl.core.trainer import end_processes, train
from video.data import load_video_examples


def main(argv=None):
    cfg = config_from_cli(argv, __doc__, modality="video")
    claim_output_dir(cfg, exit_on_error=True)  # refused or unwritable: before the model is built
    model, adapter = video.build(cfg)
    check = adapter.frames.get if cfg.data.video_check == "decode" else adapter.check_open
    examples, skipped = load_video_examples(cfg.data, check, cfg.output_dir)
    return train(cfg, adapter, model, examples, data_stats={"data/skipped": skipped})


if __name__ == "__main__":
    main()
    end_processes()
