"""Model families by `model.modality`. A family is a package (or module) that provides

    build(cfg, training: bool = True) -> (model, adapter)   its model (with LoRA, gradient checkpointing
                                                             when training) and its ModalityAdapter
    training_examples(cfg, adapter) -> (examples, data_stats)   the prompt rows of cfg.data, and
                                                             statistics logged with every step (or {})

and optionally `config_sections = {dotted key: dataclass}` (its own config sections, e.g. dllm's
{"model.diffusion": DiffusionConfig, "inpainting": InpaintingConfig}: a run of the family has them,
any other run refuses them), `shape_keys` (config keys that change what a checkpoint's weights mean:
resuming with them changed is refused), `image_examples(rows, data_cfg, base) -> (prompts, skipped)`
(benchmark rows with images, scripts/eval.py) and `evaluates_text = False` (a family whose outputs are
not graded text answers).
The built-in families have short names; any other is named by its import path
(`model.modality: mypkg.myfamily`), so a new family is its package, its script and its recipe.
"""
from __future__ import annotations

import importlib

BUILT_IN = {"text": "mmrl.text", "vlm": "mmrl.vlm", "video": "video", "dllm": "dllm", "mdm": "dllm.image"}
REQUIRED = ("build", "training_examples")


def family(name: str):
    """The module of model family `name` (a built-in short name or an import path), checked."""
    path = BUILT_IN.get(name, name)
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as err:
        if err.name is None or not path.startswith(err.name):  # a module the family itself imports is missing
            raise
        raise ValueError(f"model.modality: '{name}' is not a built-in model family ({', '.join(BUILT_IN)}) or an "
                         f"importable module path (e.g. mypkg.myfamily)") from None
    missing = [m for m in REQUIRED if not callable(getattr(module, m, None))]
    if missing:
        raise ValueError(f"model.modality: '{name}' ({path}) lacks {', '.join(missing)}: a model family provides "
                         "build(cfg, training) -> (model, adapter) and training_examples(cfg, adapter) -> "
                         "(examples, data_stats)")
    return module


def config_sections(name: str) -> dict[str, type]:
    """The config sections model family `name` adds to a run's config ({} for none)."""
    return dict(getattr(family(name), "config_sections", {}))


def shape_keys(name: str) -> tuple[str, ...]:
    """Config keys of model family `name` whose change makes its checkpoints unusable (resume refuses)."""
    return tuple(getattr(family(name), "shape_keys", ()))
