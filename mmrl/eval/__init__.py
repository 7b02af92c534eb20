"""Benchmark evaluation: pass@k / maj@k / mean@k through any adapter's generate, resumable.

    python scripts/eval.py --config configs/eval_math.yaml model.name_or_path=<dir>

and, during training, `eval.every: N` in the train config.
"""
from mmrl.eval.benchmarks import SHIPPED, Benchmark, load_benchmarks  # noqa: F401
from mmrl.eval.metrics import majority_at_k, mean_at_k, pass_at_k  # noqa: F401
from mmrl.eval.runner import EvalResult, evaluate, markdown_table, model_fingerprint  # noqa: F401
