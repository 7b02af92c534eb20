from mmrl.text.adapter import CausalLMAdapter  # noqa: F401


def build(cfg, training: bool = True):
    """(model, adapter) for a causal LM run: the checkpoint (or tiny model) of `cfg.model`, with LoRA
    and gradient checkpointing applied when `training`."""
    from mmrl.core.prefix import use_prefix_sharing
    from mmrl.models.loading import load_causal_lm, prepare_for_training

    model, tokenizer = load_causal_lm(cfg.model, seed=cfg.trainer.seed)
    if training:
        model = prepare_for_training(model, cfg.model)
    adapter = CausalLMAdapter(tokenizer, max_prompt_length=cfg.data.max_prompt_length,
                              logprob_chunk_rows=cfg.trainer.logprob_chunk_rows,
                              temperature=cfg.rollout.temperature,
                              prefix_sharing=use_prefix_sharing(cfg.trainer.prefix_sharing, model))
    return model, adapter


def training_examples(cfg, adapter=None):
    """(the prompt rows of cfg.data, {}): the model family's data (mmrl.modalities)."""
    from mmrl.data import load_examples

    return load_examples(cfg.data), {}
