"""A tiny randomly initialised Qwen2.5-VL and its processor, built locally (no downloads).

Same classes as the real checkpoints (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor with
Qwen2VLImageProcessor), sized for CPU tests and demos; the tokenizer is mmrl.models.tiny's, which
carries the Qwen-VL special tokens and chat template. `save_tiny_vlm` writes a directory that
AutoModelForImageTextToText / AutoProcessor load like a downloaded checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmrl.models.tiny import build_tokenizer


def build_processor(tokenizer, min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 64):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}  # v5 names of min/max_pixels
    common = dict(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**common),
                               video_processor=Qwen2VLVideoProcessor(**common),
                               tokenizer=tokenizer, chat_template=tokenizer.chat_template)


def build_tiny_vlm(tokenizer, hidden_size: int = 64, intermediate_size: int = 128, num_hidden_layers: int = 2,
                   num_attention_heads: int = 4, num_key_value_heads: int = 2, vision_depth: int = 2,
                   vision_hidden_size: int = 32, seed: int = 0, **_unused):
    """Qwen2_5_VLForConditionalGeneration with a 2-layer text model and a 2-block vision tower."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    head_dim = hidden_size // num_attention_heads
    section = [head_dim // 8, (head_dim // 2 - head_dim // 8) // 2]
    section.append(head_dim // 2 - sum(section))  # temporal, height, width: sums to head_dim / 2
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                         num_key_value_heads=num_key_value_heads, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": 1e4},
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None),
        vision_config=dict(depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
                           num_heads=2, out_hidden_size=hidden_size, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=56, fullatt_block_indexes=[vision_depth - 1]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def save_tiny_vlm(directory: str | Path, **model_kwargs) -> Path:
    """Write a tiny VLM + processor to `directory` (a stand-in for a downloaded checkpoint)."""
    directory = Path(directory)
    tok = build_tokenizer()
    build_tiny_vlm(tok, **model_kwargs).save_pretrained(directory)
    build_processor(tok).save_pretrained(directory)
    return directory
