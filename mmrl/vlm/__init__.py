"""Vision-language models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): adapter, image data, tiny test models."""
from mmrl.vlm.adapter import VLMAdapter  # noqa: F401
from mmrl.vlm.config import VisionConfig
from mmrl.vlm.data import image_examples  # noqa: F401  (benchmark rows with images -> (prompts, skipped): scripts/eval.py)

config_sections = {"model.vision": VisionConfig}  # mmrl.modalities


def load_vlm(model_cfg, seed: int = 0):
    """(model, processor) from `model_cfg.name_or_path`: a local directory loadable by
    AutoModelForImageTextToText + AutoProcessor, or 'tiny' (random Qwen2.5-VL built here)."""
    from pathlib import Path

    from mmrl.models.loading import torch_dtype

    dtype = torch_dtype(model_cfg.dtype)
    v = model_cfg.vision
    if v.min_pixels > v.max_pixels:
        raise ValueError(f"model.vision.min_pixels={v.min_pixels} exceeds max_pixels={v.max_pixels}")
    if model_cfg.name_or_path == "tiny":
        from mmrl.models.tiny import build_tokenizer
        from mmrl.vlm.tiny import build_processor, build_tiny_vlm

        t = model_cfg.tiny
        tokenizer = build_tokenizer(vocab_size=t.vocab_size)
        model = build_tiny_vlm(tokenizer, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                               num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                               num_key_value_heads=t.num_key_value_heads, vision_depth=t.vision_depth,
                               vision_hidden_size=t.vision_hidden_size, seed=seed, family=t.vlm_family)
        return model.to(dtype), build_processor(tokenizer, v.min_pixels, v.max_pixels, family=t.vlm_family)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = model_cfg.name_or_path
    if not Path(path).is_dir():
        raise ValueError(f"model.name_or_path '{path}' is not a local directory (mmrl does not download)")
    kwargs = {"dtype": dtype, "trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    return AutoModelForImageTextToText.from_pretrained(path, **kwargs), processor


def vision_tower(model):
    """The vision encoder module of a Qwen-VL model (bare or wrapped)."""
    for owner in (model, getattr(model, "model", None)):
        tower = getattr(owner, "visual", None) if owner is not None else None
        if tower is not None:
            return tower
    raise ValueError(f"{type(model).__name__} has no `visual` tower; model.vision.freeze_tower needs a Qwen-VL model")


def build(cfg, training: bool = True, adapter_cls=VLMAdapter, **adapter_kwargs):
    """(model, adapter) for a VLM run, with LoRA / gradient checkpointing / frozen tower when `training`;
    `adapter_cls(processor, ..., **adapter_kwargs)` (the video adapter passes its own)."""
    from mmrl.core.prefix import use_prefix_sharing
    from mmrl.models.loading import prepare_for_training

    model, processor = load_vlm(cfg.model, seed=cfg.trainer.seed)
    if training:
        if cfg.model.vision.freeze_tower:
            vision_tower(model).requires_grad_(False)
        model = prepare_for_training(model, cfg.model)
    adapter = adapter_cls(processor, min_pixels=cfg.model.vision.min_pixels, max_pixels=cfg.model.vision.max_pixels,
                          logprob_chunk_rows=cfg.trainer.logprob_chunk_rows, temperature=cfg.rollout.temperature,
                          share_vision=cfg.model.vision.share_features,
                          prefix_sharing=use_prefix_sharing(cfg.trainer.prefix_sharing, model),
                          prompt_cache=cfg.trainer.prefix_sharing, **adapter_kwargs)
    return model, adapter


def training_examples(cfg, adapter=None):
    """(the image prompt rows of cfg.data, {"data/skipped": rows left out at load}) (mmrl.modalities)."""
    from mmrl.vlm.data import load_image_examples

    examples, skipped = load_image_examples(cfg.data)
    return examples, {"data/skipped": skipped}
