"""Causal-LM adapter: chat-templated prompts, HF generate, selective log-softmax scoring."""
from __future__ import annotations

import torch

from mmrl.core.adapter import ChatPrompts, LogProbsFromLogits, sampled_completions, sampling_kwargs, shared_prompt_cache
from mmrl.core.batch import RolloutBatch
from mmrl.core.prefix import first_kept, model_attention_mask, pack_groups, unpack_logits, worth_packing


class CausalLMAdapter(ChatPrompts, LogProbsFromLogits):
    """Any AutoModelForCausalLM with a chat-templated tokenizer.

    Prompts are left padded; completions right padded. Log-probs are scored at the sampling
    temperature (the distribution the completions were drawn from) with position ids derived
    from the attention mask, exactly as `generate` computes them for left-padded rows."""

    def __init__(self, tokenizer, max_prompt_length: int = 512, logprob_chunk_rows: int = 4,
                 temperature: float = 1.0, prefix_sharing: bool = False):
        self._setup_prompts(tokenizer, max_prompt_length)
        self.logprob_chunk_rows = logprob_chunk_rows
        self.temperature = temperature
        self.prefix_sharing = prefix_sharing

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def generate(self, model, examples: list[dict], group_size: int | list[int], rollout_cfg) -> RolloutBatch:
        """`group_size` completions of every example (or group_size[i] of example i); greedy when
        rollout_cfg.temperature is 0 (evaluation)."""
        sizes, prompt_ids, prompt_mask = self._grouped_prompts(model, examples, group_size)
        was_training = model.training
        model.eval()
        cache = self._shared_prompt_cache(model, prompt_ids, prompt_mask, sizes) \
            if self.prefix_sharing and bool((sizes > 1).any()) else None
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **sampling_kwargs(rollout_cfg),
                             pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.eos_token_ids, use_cache=True,
                             cache=cache)
        model.train(was_training)
        completion_ids, completion_mask, texts = sampled_completions(out, prompt_ids.shape[1], self.tokenizer,
                                                                     self.eos_token_ids)
        group_ids = torch.arange(len(examples)).repeat_interleave(sizes)
        return RolloutBatch(prompt_ids=prompt_ids.cpu(), prompt_mask=prompt_mask.cpu(),
                            completion_ids=completion_ids, completion_mask=completion_mask,
                            group_ids=group_ids, examples=[e for e, k in zip(examples, sizes.tolist()) for _ in range(k)],
                            completions_text=texts)

    def encode(self, examples: list[dict], completions: list[str]) -> RolloutBatch:
        return self._teacher_forced(examples, completions)

    @staticmethod
    def _shared_prompt_cache(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sizes: torch.Tensor):
        """The KV cache of every prompt but its last token, computed once per group and repeated for
        the group's rows (`shared_prompt_cache`; positions from the left-padded mask, as `generate`
        derives them)."""
        firsts = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]]).to(prompt_ids.device)
        ids, mask = prompt_ids[firsts, :-1], prompt_mask[firsts, :-1]
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        return shared_prompt_cache(model, dict(input_ids=ids, attention_mask=mask, position_ids=position_ids), sizes)[0]

    # ------------------------------------------------------------------ scoring
    def completion_logits(self, model, batch: RolloutBatch) -> torch.Tensor:
        """[N, C, V] logits predicting each completion token, at the sampling temperature; with
        `prefix_sharing`, each group's prompt is encoded once (mmrl.core.prefix: same logits)."""
        if self.prefix_sharing and worth_packing(batch, model):
            packed = pack_groups(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask,
                                 batch.group_ids, pad_id=self.tokenizer.pad_token_id)
            offset = first_kept(packed)
            logits = model(input_ids=packed.input_ids, attention_mask=model_attention_mask(packed, model),
                           position_ids=packed.position_ids, logits_to_keep=packed.length - offset,
                           use_cache=False).logits
            return self.at_temperature(unpack_logits(logits, packed, offset))
        input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
        attention_mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        n_completion = batch.completion_ids.shape[1]
        # Only the completion positions need the LM head: logits_to_keep skips the prompt's.
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       logits_to_keep=n_completion + 1, use_cache=False).logits[:, :-1]
        return self.at_temperature(logits)

    def save_pretrained(self, directory) -> None:
        self.tokenizer.save_pretrained(directory)
