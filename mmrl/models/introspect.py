"""What a loaded model's HF config says about its language layers: the text config (a VLM's too), the
hidden size, each layer's attention type and the attention kernel. Read by the shared-prefix packing
(mmrl.core.prefix) and the FLOP counter (mmrl.core.throughput)."""
from __future__ import annotations


def text_config_of(model):
    """The config of a model's language part (DDP-wrapped or not; a VLM's text config)."""
    config = getattr(model, "module", model).config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def hidden_size_of(model) -> int:
    """The (text) hidden size of a model, DDP-wrapped or not."""
    return text_config_of(model).hidden_size


def attention_layer_types(config) -> list[str]:
    """Each decoder layer's attention type: the config's `layer_types` (transformers 5), else every
    layer sliding when the config sets a `sliding_window` (Mistral), else full attention."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    kind = "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"
    return [kind] * int(getattr(config, "num_hidden_layers", 1))


def attention_implementation(model) -> str:
    """The attention kernel of the model's language layers (transformers' `_attn_implementation`)."""
    return getattr(text_config_of(model), "_attn_implementation", None) \
        or getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
