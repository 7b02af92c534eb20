"""Masked diffusion LMs (LLaDA, Dream, LLaDA2; a tiny bidirectional model for tests): block
semi-autoregressive rollouts, likelihood estimators (d1's one-step, ELBO by double Monte Carlo,
GDPO's semi-deterministic ELBO), the GDPO sequence loss and IGPO's inpainting."""
from dllm import igpo  # noqa: F401  (registers IGPO's inpainting as a training method)
from dllm.config import DiffusionConfig, InpaintingConfig

config_sections = {"model.diffusion": DiffusionConfig, "inpainting": InpaintingConfig}  # mmrl.modalities


def check_kl(cfg) -> None:
    """A per-token KL estimate needs per-token log-probs: the ELBO estimators' terms are (w / t) log p
    at masked positions and 0 elsewhere, on which k2 / k3 are not a KL (GDPO defines no KL term). Their
    sum is a sequence log-likelihood estimate, so a KL in the reward with k1 (the difference of the
    policy's and the reference's ELBOs) is the one form allowed."""
    from dllm.estimators import ESTIMATORS

    a, d = cfg.algorithm, cfg.model.diffusion
    if a.beta > 0 and ESTIMATORS.flag(d.estimator, "weighted") and \
            not (a.kl_penalty == "reward" and a.kl_estimator == "k1"):
        raise ValueError(f"algorithm.beta={a.beta} with model.diffusion.estimator={d.estimator}: a per-token "
                         f"{a.kl_estimator} estimate on ELBO terms is not a KL. Set algorithm.beta: 0, or "
                         "algorithm.kl_penalty: reward with algorithm.kl_estimator: k1 (the ELBO difference to the "
                         "reference), or use model.diffusion.estimator: one_step")


def build(cfg, training: bool = True):
    """(model, adapter) for a masked diffusion run, with LoRA / gradient checkpointing when `training`."""
    from dllm.adapter import MaskedDiffusionAdapter
    from dllm.models import load_mask_predictor, mask_token_id_of
    from mmrl.models.loading import prepare_for_training

    if training:
        check_kl(cfg)
    model, tokenizer = load_mask_predictor(cfg.model, seed=cfg.trainer.seed)
    if training:
        model = prepare_for_training(model, cfg.model)
    d = cfg.model.diffusion
    adapter = MaskedDiffusionAdapter(tokenizer, mask_token_id_of(model, tokenizer, d.mask_token_id),
                                     block_length=d.block_length, steps=d.steps, estimator=d.estimator,
                                     estimator_params=d.estimator_params, shift_logits=d.shift_logits,
                                     max_prompt_length=cfg.data.max_prompt_length,
                                     logprob_chunk_rows=cfg.trainer.logprob_chunk_rows,
                                     sft_pad_to=cfg.rollout.max_new_tokens, loss_scope=d.loss_scope,
                                     confidence=d.confidence, temperature=cfg.rollout.temperature)
    return model, adapter


def training_examples(cfg, adapter=None):
    """(the prompt rows of cfg.data, {}): the model family's data (mmrl.modalities)."""
    from mmrl.data import load_examples

    return load_examples(cfg.data), {}
