"""Evaluate a checkpoint on math (and, for vision-language models, image) benchmarks: pass@k, maj@k,
mean@k, a markdown table and eval.json.

    python scripts/eval.py --config configs/eval_math.yaml model.name_or_path=runs/x/checkpoints/step_000500/model
    accelerate launch --num_processes 8 scripts/eval.py --config configs/eval_math.yaml model.name_or_path=<dir>

Completions are cached under eval.cache_dir (default <output_dir>/eval_cache) as they are generated:
run the same command again after an interruption and only the missing samples are drawn.
"""
import json
from pathlib import Path

from accelerate import Accelerator

from mmrl.config import config_from_cli
from mmrl.core.trainer import end_processes
from mmrl.eval import evaluate, load_benchmarks, markdown_table, model_fingerprint
from mmrl.modalities import family



def main(argv=None):
    cfg = config_from_cli(argv, __doc__)
    try:
        fam = family(cfg.model.modality)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if not getattr(fam, "evaluates_text", True):
        raise SystemExit(f"model.modality={cfg.model.modality!r}: its outputs are not text answers, which these "
                         "benchmarks grade")
    # rows with images become prompts through the family's image loader (checked before the model loads)
    images = getattr(fam, "image_examples", None)
    try:
        benchmarks = load_benchmarks(cfg.eval, cfg.eval.system_prompt or cfg.data.system_prompt, image_examples=images)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    accelerator = Accelerator()
    model, adapter = fam.build(cfg, training=False)
    model = model.to(accelerator.device).eval()
    tiny = json.dumps({"tiny": vars(cfg.model.tiny), "seed": cfg.trainer.seed}, sort_keys=True) \
        if cfg.model.name_or_path == "tiny" else ""
    key = model_fingerprint(cfg.model.name_or_path, extra=f"{cfg.model.dtype}{tiny}")
    cache_root = Path(cfg.eval.cache_dir or Path(cfg.output_dir) / "eval_cache")
    result = evaluate(adapter, model, benchmarks, cfg.eval, cache_root, key, accelerator)
    if accelerator.is_main_process:
        out = Path(cfg.output_dir) / "eval.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_json(), indent=1))
        print(markdown_table(result))
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
    end_processes()
