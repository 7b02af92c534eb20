"""Loading checkpoints from local directories and preparing them for training (LoRA, checkpointing)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"model.dtype: '{name}' is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def load_causal_lm(model_cfg, seed: int = 0):
    """(model, tokenizer) from `model_cfg.name_or_path`: a local directory, or 'tiny' (random, built here)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmrl.models.tiny import build_tiny_causal_lm, build_tokenizer

    dtype = torch_dtype(model_cfg.dtype)
    if model_cfg.name_or_path == "tiny":
        tokenizer = build_tokenizer(vocab_size=model_cfg.tiny.vocab_size)
        t = model_cfg.tiny
        model = build_tiny_causal_lm(tokenizer, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                                     num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                                     num_key_value_heads=t.num_key_value_heads, seed=seed)
        return model.to(dtype), tokenizer
    path = model_cfg.name_or_path
    if not Path(path).is_dir():
        log.warning("model.name_or_path '%s' is not a local directory; trying it as a hub id", path)
    kwargs = {"dtype": dtype, "trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model, tokenizer


def prepare_for_training(model, model_cfg):
    """Gradient checkpointing and LoRA, as switched on in the config."""
    if model_cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if model_cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = model_cfg.lora
        # the adapter's config names its base by absolute path, so `from_pretrained` on a checkpoint's model/
        # finds it without the hub (a tiny random base has no directory: trainer.save_merged_model writes one)
        base = None if model_cfg.name_or_path == "tiny" else str(Path(model_cfg.name_or_path).resolve())
        model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                 target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
                                                 base_model_name_or_path=base))
        if model_cfg.gradient_checkpointing:
            model.enable_input_require_grads()
    return model
