"""Tiny randomly initialised models and a locally trained tokenizer, for tests and CPU demos.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained in-process on a small
built-in corpus (digits are split one per token, as in Qwen's tokenizer), and the model is a
Qwen2 causal LM built from a config. `save_tiny` writes both to a directory that
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` load like a real checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<|mask|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS_WORDS = (
    "what is plus minus times the answer sum of and how many are there in image video count "
    "red green blue yellow square circle triangle shape left right first last move moves up down "
    "think answer question solve step reason because so therefore final number total each "
    "<think> </think> <answer> </answer> \\boxed{ } ( ) + - * / = ? . , : A B C D E yes no"
).split()


def build_tokenizer(extra_corpus: list[str] | None = None, vocab_size: int = 400):
    """Byte-level BPE tokenizer with Qwen-style special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [" ".join(_CORPUS_WORDS)] * 4 + [f"What is {a} + {b}? <answer>{a + b}</answer>"
                                                for a in range(20) for b in range(0, 20, 3)]
    corpus += list(extra_corpus or [])
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 mask_token="<|mask|>", additional_special_tokens=SPECIAL_TOKENS[1:7])
    hf.chat_template = CHAT_TEMPLATE
    hf.padding_side = "left"
    hf.model_max_length = 4096
    return hf


def build_tiny_causal_lm(tokenizer, hidden_size: int = 64, intermediate_size: int = 128,
                         num_hidden_layers: int = 2, num_attention_heads: int = 4,
                         num_key_value_heads: int = 2, seed: int = 0, **_unused):
    """A randomly initialised Qwen2ForCausalLM sized for the given tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny(directory: str | Path, builder=build_tiny_causal_lm, **model_kwargs) -> Path:
    """Write a tiny model (`builder(tokenizer, **model_kwargs)`, a causal LM by default) + tokenizer
    to `directory` (a stand-in for a downloaded checkpoint)."""
    directory = Path(directory)
    tok = build_tokenizer()
    builder(tok, **model_kwargs).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
