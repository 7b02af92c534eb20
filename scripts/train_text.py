"""Group-relative RL on a causal LM.

    accelerate launch scripts/train_text.py --config configs/text_math_grpo.yaml \
        model.name_or_path=/path/to/Qwen3-8B output_dir=runs/qwen3-gsm8k
"""
import argparse
import logging

from mmrl.config import load_config
from mmrl.core.trainer import train
from mmrl.data import load_examples
from mmrl.models.loading import load_causal_lm, prepare_for_training
from mmrl.text import CausalLMAdapter


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, action="append",
                        help="recipe yaml under configs/; repeat to overlay a method, e.g. "
                             "--config configs/tiny_text_grpo.yaml --config configs/methods/gdpo.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.max_steps=20")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    cfg = load_config(args.config, args.overrides)
    model, tokenizer = load_causal_lm(cfg.model, seed=cfg.trainer.seed)
    model = prepare_for_training(model, cfg.model)
    adapter = CausalLMAdapter(tokenizer, max_prompt_length=cfg.data.max_prompt_length,
                              logprob_chunk_rows=cfg.trainer.logprob_chunk_rows,
                              temperature=cfg.rollout.temperature)
    return train(cfg, adapter, model, load_examples(cfg.data))


if __name__ == "__main__":
    main()
