"""Mask predictors: a model that, given a partially masked sequence, returns logits for every
position (LLaDA-8B, Dream-7B and LLaDA2 through their remote code; a tiny bidirectional model built
here for tests and demos), and their loading from a local directory.

The tiny model is a Qwen2 decoder whose 2-D padding mask is turned into a 4-D boolean mask over all
key positions, which makes every layer attend both ways (transformers has no LLaDA class). Its
config carries `mask_token_id`. It registers with AutoConfig / AutoModel, so a saved directory
loads with `AutoModel.from_pretrained` like a real checkpoint, without remote code.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, Qwen2Config, Qwen2ForCausalLM

# LLaDA's remote code was written for transformers 4.38 (README pin); on transformers 5 its model class
# may lack attributes the loader now reads. What to do, shown when loading fails:
REMOTE_CODE_FIX = (
    "LLaDA / Dream remote code targets transformers 4.x (LLaDA pins 4.38, Dream 4.46). On transformers 5, "
    "edit the checkpoint's modeling file: give the model class `_tied_weights_keys = []` (or the tied names) "
    "and call `self.post_init()` at the end of its __init__ (ML-GSAI/LLaDA issue #130 reports the same "
    "'all_tied_weights_keys' error); or load it in an environment with transformers<5 and save it again "
    "with save_pretrained. Also set model.mask_token_id (LLaDA-8B 126336, Dream 151666) if the config "
    "does not carry it")


class TinyMaskedDiffusionConfig(Qwen2Config):
    model_type = "mmrl_masked_diffusion"

    def __init__(self, mask_token_id: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.mask_token_id = mask_token_id


class TinyMaskedDiffusionLM(Qwen2ForCausalLM):
    """Qwen2 with bidirectional attention: logits at position i predict the token at position i
    (no shift, as LLaDA)."""
    config_class = TinyMaskedDiffusionConfig

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        batch, length = input_ids.shape
        keys = torch.ones(batch, length, dtype=torch.bool, device=input_ids.device) if attention_mask is None \
            else attention_mask.bool()
        full = keys[:, None, None, :].expand(batch, 1, length, length)
        return super().forward(input_ids=input_ids, attention_mask=full, use_cache=False, **kwargs)


AutoConfig.register(TinyMaskedDiffusionConfig.model_type, TinyMaskedDiffusionConfig, exist_ok=True)
AutoModel.register(TinyMaskedDiffusionConfig, TinyMaskedDiffusionLM, exist_ok=True)


def build_tiny_mdlm(tokenizer, hidden_size: int = 64, intermediate_size: int = 128, num_hidden_layers: int = 2,
                    num_attention_heads: int = 4, num_key_value_heads: int = 2, seed: int = 0, **_unused):
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token; a masked diffusion model needs one")
    config = TinyMaskedDiffusionConfig(
        mask_token_id=tokenizer.mask_token_id, vocab_size=len(tokenizer), hidden_size=hidden_size,
        intermediate_size=intermediate_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return TinyMaskedDiffusionLM(config)


def save_tiny_mdlm(directory: str | Path, **model_kwargs) -> Path:
    """Write a tiny mask predictor + tokenizer to `directory` (a stand-in for a downloaded checkpoint)."""
    from mmrl.models.tiny import save_tiny

    return save_tiny(directory, builder=build_tiny_mdlm, **model_kwargs)


def mask_token_id_of(model, tokenizer, configured: int | None = None) -> int:
    """The mask token id: configured, else the model config's, else the tokenizer's."""
    for value in (configured, getattr(model.config, "mask_token_id", None), tokenizer.mask_token_id):
        if value is not None:
            return int(value)
    raise ValueError("no mask token id: set model.mask_token_id (LLaDA-8B 126336, Dream 151666)")


def load_mask_predictor(model_cfg, seed: int = 0):
    """(model, tokenizer) from `model_cfg.name_or_path`: 'tiny' (built here) or a local directory
    loadable by AutoModel (+ trust_remote_code for LLaDA / Dream / LLaDA2)."""
    from transformers import AutoTokenizer

    from mmrl.models.loading import torch_dtype

    if model_cfg.name_or_path == "tiny":
        from mmrl.models.tiny import build_tokenizer

        t = model_cfg.tiny
        tokenizer = build_tokenizer(vocab_size=t.vocab_size)
        return build_tiny_mdlm(tokenizer, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
                               num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
                               num_key_value_heads=t.num_key_value_heads, seed=seed).to(torch_dtype(model_cfg.dtype)), \
            tokenizer
    path = model_cfg.name_or_path
    if not Path(path).is_dir():
        raise ValueError(f"model.name_or_path '{path}' is not a local directory (mmrl does not download)")
    config_file = Path(path) / "config.json"
    auto_map = json.loads(config_file.read_text()).get("auto_map") if config_file.exists() else None
    if auto_map and not model_cfg.trust_remote_code:
        raise ValueError(f"{path} ships its own modeling code (auto_map in config.json: LLaDA, Dream, LLaDA2): "
                         "set model.trust_remote_code: true")
    kwargs = {"dtype": torch_dtype(model_cfg.dtype), "trust_remote_code": model_cfg.trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
        model = AutoModel.from_pretrained(path, **kwargs)
    except (AttributeError, TypeError, ImportError, KeyError, ValueError, OSError) as err:
        raise RuntimeError(f"loading the mask predictor at {path} failed ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:300]}). {REMOTE_CODE_FIX}") from err
    return model, tokenizer
