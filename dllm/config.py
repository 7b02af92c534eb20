"""The masked diffusion LM family's config sections, `model.diffusion` and `inpainting` (IGPO),
registered by dllm (mmrl.modalities)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DiffusionConfig:
    """Masked diffusion LMs (model.modality: dllm): sampling and the likelihood estimator (dllm/)."""
    mask_token_id: int | None = None  # None: the model config's, else the tokenizer's (LLaDA-8B 126336, Dream 151666)
    block_length: int = 32  # semi-autoregressive blocks; rollout.max_new_tokens must be a multiple
    steps: int | None = None  # denoising steps over the whole completion (None: max_new_tokens / 2)
    confidence: str = "sampled"  # what ranks positions for commit: the sampled token's tempered probability (sampled) or its untempered one (model: LLaDA's low_confidence)
    estimator: str = "one_step"  # one_step (d1) | elbo_mc | elbo_sdmc (GDPO) | ar_exact (JustGRPO: left-to-right rollouts, exact log-probs)
    estimator_params: dict = field(default_factory=dict)  # one_step: p_mask_prompt; elbo_mc: passes, eps; elbo_sdmc: nodes, masks_per_node
    shift_logits: bool = False  # Dream-style models: position i-1 predicts token i
    loss_scope: str = "answer"  # ELBO and exact (ar_exact) estimators score the whole canvas: the loss counts the 'answer' (up to the first EOS, as d1) or the whole 'canvas' (EOS padding too)


@dataclass
class InpaintingConfig:
    """IGPO (arXiv 2509.10396; dllm/igpo.py): groups whose completions are all wrong are re-generated
    with chunks of the reference reasoning (data.solution_field) fixed in the canvas, and correct
    inpainted samples replace up to `max_replace_fraction` of the group. Defaults: the official code."""
    enabled: bool = False
    eta_low: float = 0.2  # revealed fraction of the chunks ~ U[eta_low, eta_high], sorted within the group
    eta_high: float = 0.6
    min_chunk: int = 5  # chunk sizes ~ U{min_chunk..max_chunk} tokens
    max_chunk: int = 10
    free_tail: int = 30  # the last canvas positions never hold a hint
    max_spacing: int = 100  # largest gap between placed chunks
    max_replace_fraction: float = 0.5  # lambda: at most this share of the group is replaced
    entropy_fraction: float = 0.2  # tau: hint tokens that train = the top max(1, floor(tau n)) by entropy
    reveal_last_chunk: bool = False  # the official code always reveals the last chunk (which may hold the answer); the paper hides the answer
    correct_threshold: float = 1.0  # a sample is correct when the success reward (rewards[i].success, default the first) is >= this
    loss_scope: str = "answer"  # answer: loss and GSPO ratio over the tokens up to the first EOS; canvas: the official code's (every canvas position), see dllm/igpo.py
    reference_prefix: str = ""  # prepended to the reference solution before chunking (official: "<reasoning>\n")
