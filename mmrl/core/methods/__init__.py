"""Training methods that carry state or rewrite a rollout, plugged into the loop through the hooks of
`Method` (see base.py). Importing this package registers the built-in ones; importing the dllm package
registers IGPO's inpainting, and dllm.image Co-GRPO's alternation."""
from mmrl.core.methods import augmentation, llds, rescoring, spo  # noqa: F401  (registers them)
from mmrl.core.methods.base import METHODS, Loop, Method, build_methods, check_methods

__all__ = ["METHODS", "Loop", "Method", "build_methods", "check_methods"]
