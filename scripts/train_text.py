"""Group-relative RL on a causal LM.

    accelerate launch scripts/train_text.py --config configs/text_math_grpo.yaml \
        model.name_or_path=/path/to/Qwen3-8B output_dir=runs/qwen3-gsm8k
"""
import argparse
import logging

from mmrl.config import load_config
from mmrl.core.trainer import train
from mmrl.data import load_examples
from mmrl import text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, action="append",
                        help="recipe yaml under configs/; repeat to overlay a method, e.g. "
                             "--config configs/tiny_text_grpo.yaml --config configs/methods/gdpo.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.max_steps=20")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    cfg = load_config(args.config, args.overrides)
    if cfg.model.modality != "text":
        raise SystemExit(f"model.modality={cfg.model.modality!r}: scripts/train_text.py trains causal LMs "
                         "(model.modality: text); use the script of that modality")
    model, adapter = text.build(cfg)
    return train(cfg, adapter, model, load_examples(cfg.data))


if __name__ == "__main__":
    main()
