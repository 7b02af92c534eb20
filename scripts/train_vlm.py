"""Group-relative RL on a vision-language model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) with image prompts.

    accelerate launch scripts/train_vlm.py --config configs/tiny_vlm_grpo.yaml
    accelerate launch --num_processes 8 scripts/train_vlm.py --config configs/vlm_grpo_qwen25vl_7b.yaml \
        model.name_or_path=/path/to/Qwen2.5-VL-7B-Instruct
"""
import argparse
import logging

from mmrl import vlm
from mmrl.config import load_config
from mmrl.core.trainer import train
from mmrl.vlm.data import load_image_examples


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, action="append", help="recipe yaml (repeat to overlay)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.max_steps=20")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    cfg = load_config(args.config, args.overrides)
    if cfg.model.modality != "vlm":
        raise SystemExit(f"model.modality={cfg.model.modality!r}: scripts/train_vlm.py trains vision-language "
                         "models; set model.modality: vlm")
    model, adapter = vlm.build(cfg)
    examples, skipped = load_image_examples(cfg.data)
    return train(cfg, adapter, model, examples, data_stats={"data/skipped": skipped})


if __name__ == "__main__":
    main()
