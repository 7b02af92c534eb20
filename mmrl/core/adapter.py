"""The ModalityAdapter protocol: the only things the trainer asks of a model family."""
from __future__ import annotations

from typing import Protocol

import torch

from mmrl.core.batch import RolloutBatch, pad_sequences
from mmrl.core.logprobs import selective_log_softmax


class ModalityAdapter(Protocol):
    def prepare(self, example: dict):
        """Model inputs for one prompt (chat template, image/video loading)."""

    def generate(self, model, examples: list[dict], group_size: int | list[int], rollout_cfg) -> RolloutBatch:
        """`group_size` sampled completions per example (or group_size[i] for example i: groups may
        differ in size), grouped consecutively; fills completions_text and examples (one per row)."""

    def encode(self, examples: list[dict], completions: list[str]) -> RolloutBatch:
        """Teacher-forced batch of given completions (supervised warm-up, scoring references)."""

    def completion_logits(self, model, batch: RolloutBatch) -> torch.Tensor:
        """[N, C, V] logits predicting each completion token (token weightings that need the full
        distribution, e.g. TW-GRPO, call it; optional for adapters that do not support them)."""

    def log_probs(self, model, batch: RolloutBatch, with_entropy: bool = False):
        """Per-token log-probs [N, C] of the batch's completion tokens (and entropies [N, C])."""

    def save_pretrained(self, directory) -> None:
        """Write the tokenizer / processor next to a saved model."""


# The optional members of a ModalityAdapter that the core reads (through `adapter_option`), with their
# defaults: an adapter sets those it needs.
ADAPTER_OPTIONS = {
    "fresh_masks": False,  # scoring draws random masks per inner iteration (masked diffusion): the core then
                           # calls log_probs(model, batch, with_entropy, iteration=k) and records old /
                           # reference log-probs per iteration
    "supports_frame_noise": False,  # video inputs: difficulty-aware augmentation may add frame noise
    "logprob_chunk_rows": 4,  # rows per chunk of the selective log-softmax
    "check_rollout": None,  # check_rollout(rollout_cfg): refuse rollout settings the model cannot take
    "sft_loss": None,  # sft_loss(model, batch): the warm-up's loss, when not next-token cross-entropy
    "image_examples": None,  # image_examples(rows, data_cfg, base) -> (prompts, skipped): benchmark rows with images
}


def shared_prompt_cache(model, inputs: dict, sizes: torch.Tensor):
    """One forward over each group's prompt without its last token (`inputs`: one row per group), its KV
    cache repeated for the group's `sizes[g]` rows, so `generate` prefills only each row's last prompt
    token (the same cache as a per-row prefill). Returns (cache, the group of every row)."""
    from transformers import DynamicCache

    device = inputs["input_ids"].device
    cache = DynamicCache(config=model.config)
    model(**inputs, cache=cache, use_cache=True, logits_to_keep=1)
    rows = torch.arange(len(sizes), device=device).repeat_interleave(sizes.to(device))
    cache.batch_select_indices(rows)
    return cache, rows


def adapter_option(adapter, name: str):
    """The adapter's optional member `name` (ADAPTER_OPTIONS), or its default."""
    return getattr(adapter, name, ADAPTER_OPTIONS[name])


def iteration_kwargs(adapter, iteration: int) -> dict:
    """log_probs keyword arguments for inner iteration `iteration`: adapters with `fresh_masks` draw
    that iteration's masks; the others take no such argument."""
    return {"iteration": iteration} if adapter_option(adapter, "fresh_masks") else {}


def assert_adapter(adapter) -> None:
    missing = [m for m in ("prepare", "generate", "encode", "log_probs", "save_pretrained")
               if not callable(getattr(adapter, m, None))]
    if missing:
        raise TypeError(f"{type(adapter).__name__} is not a ModalityAdapter: missing {missing}")


def completion_mask_from_eos(completion_ids: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """[N, C] mask: 1 up to and including the first EOS of each row, 0 after it."""
    is_eos = torch.isin(completion_ids, torch.as_tensor(eos_token_ids, device=completion_ids.device))
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
    return (~after_eos).long()


def group_sizes(group_size: int | list[int], num_examples: int) -> torch.Tensor:
    """[num_examples] completions per example from an int or a per-example list."""
    if isinstance(group_size, int):
        return torch.full((num_examples,), group_size, dtype=torch.long)
    if len(group_size) != num_examples or min(group_size) < 1:
        raise ValueError(f"group sizes {group_size} do not give >= 1 completion to each of {num_examples} examples")
    return torch.as_tensor(group_size, dtype=torch.long)


def sampling_kwargs(rollout_cfg) -> dict:
    """`generate` keyword arguments: sampling at rollout_cfg's temperature / top-p / top-k, or greedy
    decoding when the temperature is 0 (evaluation). Never `synced_gpus` (transformers' default for an
    FSDP model: every rank steps until all are done, an all-reduce per token): mmrl generates from a
    sharded model only with its parameters gathered (mmrl.core.sharding.gathered_for_generation), so
    a forward needs no collective, and ranks may generate a different number of times (augmentation,
    evaluation), which lockstep decoding would hang on."""
    common = dict(max_new_tokens=rollout_cfg.max_new_tokens, min_new_tokens=rollout_cfg.min_new_tokens,
                  synced_gpus=False)
    if rollout_cfg.temperature > 0:
        return dict(do_sample=True, temperature=rollout_cfg.temperature, top_p=rollout_cfg.top_p,
                    top_k=rollout_cfg.top_k, **common)
    return dict(do_sample=False, **common)


def sampled_completions(sequences: torch.Tensor, prompt_length: int, tokenizer, eos_token_ids: list[int]):
    """(completion ids [N, C] padded after the first EOS, mask [N, C], decoded texts) of `generate`'s
    output rows (prompt + completion)."""
    completion_ids = sequences[:, prompt_length:].cpu()
    completion_mask = completion_mask_from_eos(completion_ids, eos_token_ids)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    return completion_ids, completion_mask, tokenizer.batch_decode(completion_ids, skip_special_tokens=True)


def tokenized_completions(tokenizer, completions: list[str], eos_token_id: int):
    """(ids, mask) of given completion texts, each ending in EOS, right padded (teacher forcing)."""
    seqs = [tokenizer(c, add_special_tokens=False)["input_ids"] + [eos_token_id] for c in completions]
    return pad_sequences(seqs, tokenizer.pad_token_id)


class LogProbsFromLogits:
    """`log_probs` for adapters that define `completion_logits` (raw logits; scaled here to the
    sampling `temperature`, the distribution the completions were drawn from)."""

    temperature: float = 1.0
    logprob_chunk_rows: int = 4

    def at_temperature(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature if self.temperature != 1.0 else logits

    def log_probs(self, model, batch: RolloutBatch, with_entropy: bool = False):
        return selective_log_softmax(self.completion_logits(model, batch), batch.completion_ids,
                                     chunk_rows=self.logprob_chunk_rows, with_entropy=with_entropy)


class ChatPrompts:
    """Chat-templated text prompts, left padded and cut from the left at `max_prompt_length`: the
    prompt side shared by the causal-LM and the masked-diffusion adapters."""

    tokenizer = None
    max_prompt_length: int = 512
    eos_token_ids: list[int]

    def _setup_prompts(self, tokenizer, max_prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"  # over-long prompts lose their beginning, not the question
        self.max_prompt_length = max_prompt_length
        eos = tokenizer.eos_token_id
        self.eos_token_ids = [eos] if isinstance(eos, int) else list(eos)

    def prepare(self, example: dict) -> str:
        prompt = example["prompt"]
        if isinstance(prompt, str):
            return prompt
        return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def _encode_prompts(self, examples: list[dict]):
        texts = [self.prepare(e) for e in examples]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_prompt_length,
                             add_special_tokens=False, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def _grouped_prompts(self, model, examples: list[dict], group_size: int | list[int]):
        """(group sizes, prompt ids, prompt mask) with each prompt repeated for its group, on the model's device."""
        sizes = group_sizes(group_size, len(examples))
        prompt_ids, prompt_mask = self._encode_prompts(examples)
        device = next(model.parameters()).device
        return sizes, prompt_ids.repeat_interleave(sizes, 0).to(device), prompt_mask.repeat_interleave(sizes, 0).to(device)

    def _teacher_forced(self, examples: list[dict], completions: list[str], **extras) -> RolloutBatch:
        prompt_ids, prompt_mask = self._encode_prompts(examples)
        completion_ids, completion_mask = tokenized_completions(self.tokenizer, completions, self.eos_token_ids[0])
        return RolloutBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                            completion_mask=completion_mask, group_ids=torch.arange(len(examples)),
                            extras={k: f(completion_ids) for k, f in extras.items()},
                            examples=list(examples), completions_text=list(completions))
