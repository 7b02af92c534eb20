"""Masked diffusion LMs (LLaDA, Dream, LLaDA2; a tiny bidirectional model for tests): block
semi-autoregressive rollouts, likelihood estimators (d1's one-step, ELBO by double Monte Carlo,
GDPO's semi-deterministic ELBO), the GDPO sequence loss and IGPO's inpainting."""


def build(cfg, training: bool = True):
    """(model, adapter) for a masked diffusion run, with LoRA / gradient checkpointing when `training`."""
    from dllm.adapter import MaskedDiffusionAdapter
    from dllm.models import load_mask_predictor, mask_token_id_of
    from mmrl.models.loading import prepare_for_training

    model, tokenizer = load_mask_predictor(cfg.model, seed=cfg.trainer.seed)
    if training:
        model = prepare_for_training(model, cfg.model)
    d = cfg.model.diffusion
    adapter = MaskedDiffusionAdapter(tokenizer, mask_token_id_of(model, tokenizer, d.mask_token_id),
                                     block_length=d.block_length, steps=d.steps, estimator=d.estimator,
                                     estimator_params=d.estimator_params, shift_logits=d.shift_logits,
                                     max_prompt_length=cfg.data.max_prompt_length,
                                     logprob_chunk_rows=cfg.trainer.logprob_chunk_rows,
                                     sft_pad_to=cfg.rollout.max_new_tokens, loss_scope=d.loss_scope)
    return model, adapter
