"""Tiny randomly initialised Qwen-VL models (Qwen2.5-VL by default, Qwen2-VL, Qwen3-VL) and their
processors, built locally (no downloads).

Same classes as the real checkpoints (e.g. Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
with Qwen2VLImageProcessor), sized for CPU tests and demos; the tokenizer is mmrl.models.tiny's, which
carries the Qwen-VL special tokens and chat template. `save_tiny_vlm` writes a directory that
AutoModelForImageTextToText / AutoProcessor load like a downloaded checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmrl.models.tiny import build_tokenizer


FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl")


def build_processor(tokenizer, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 64, family: str = "qwen2_5_vl"):
    import transformers
    from transformers import Qwen2VLImageProcessor

    patch = 16 if family == "qwen3_vl" else 14
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}  # v5 names of min/max_pixels
    common = dict(size=size, patch_size=patch, merge_size=2, temporal_patch_size=2)
    processor_cls, video_cls = {
        "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
        "qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
        "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
    }[family]
    return getattr(transformers, processor_cls)(
        image_processor=Qwen2VLImageProcessor(**common), video_processor=getattr(transformers, video_cls)(**common),
        tokenizer=tokenizer, chat_template=tokenizer.chat_template)


def build_tiny_vlm(tokenizer, hidden_size: int = 64, intermediate_size: int = 128, num_hidden_layers: int = 2,
                   num_attention_heads: int = 4, num_key_value_heads: int = 2, vision_depth: int = 2,
                   vision_hidden_size: int = 32, seed: int = 0, family: str = "qwen2_5_vl",
                   attn_implementation: str | None = None, text_overrides: dict | None = None, **_unused):
    """A Qwen-VL model of `family` (qwen2_5_vl, qwen2_vl, qwen3_vl) with a small text model and
    vision tower, randomly initialised; `text_overrides` go into its text config (tests: a sliding
    window), `attn_implementation` picks the attention (default sdpa)."""
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"tiny VLM family '{family}' is not one of {FAMILIES}")
    head_dim = hidden_size // num_attention_heads
    section = [head_dim // 8, (head_dim // 2 - head_dim // 8) // 2]
    section.append(head_dim // 2 - sum(section))  # temporal, height, width: sums to head_dim / 2
    rope = {"rope_type": "default", "mrope_section": section, "rope_theta": 1e4}
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                num_key_value_heads=num_key_value_heads, max_position_embeddings=4096, rope_parameters=rope,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    vision = {
        "qwen2_5_vl": dict(depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
                           num_heads=2, out_hidden_size=hidden_size, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=56, fullatt_block_indexes=[vision_depth - 1]),
        "qwen2_vl": dict(depth=vision_depth, embed_dim=vision_hidden_size, hidden_size=hidden_size, num_heads=2,
                         mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        "qwen3_vl": dict(depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
                         num_heads=2, out_hidden_size=hidden_size, patch_size=16, num_position_embeddings=64,
                         deepstack_visual_indexes=[0]),
    }[family]
    if family == "qwen3_vl":
        text.update(head_dim=head_dim, rope_parameters={**rope, "mrope_interleaved": True})
    text.update(text_overrides or {})
    config_cls, model_cls = {"qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration"),
                             "qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration"),
                             "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration")}[family]
    ids = tokenizer.convert_tokens_to_ids
    config = getattr(transformers, config_cls)(
        text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = getattr(transformers, model_cls)(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def save_tiny_vlm(directory: str | Path, family: str = "qwen2_5_vl", **model_kwargs) -> Path:
    """Write a tiny VLM + processor to `directory` (a stand-in for a downloaded checkpoint)."""
    directory = Path(directory)
    tok = build_tokenizer()
    build_tiny_vlm(tok, family=family, **model_kwargs).save_pretrained(directory)
    build_processor(tok, family=family).save_pretrained(directory)
    return directory
