import torch

from mmrl.config import ModelConfig, RolloutConfig
from mmrl.core.adapter import completion_mask_from_eos
from mmrl.models.loading import load_causal_lm
from mmrl.models.tiny import save_tiny
from mmrl.text import CausalLMAdapter

EXAMPLES = [{"prompt": [{"role": "user", "content": "What is 1 + 2?"}]},
            {"prompt": [{"role": "user", "content": "What is 13 + 5 and how many are there?"}]}]


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
    assert completion_mask_from_eos(ids, [2]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_log_probs_match_the_sampling_distribution_with_left_padding(tokenizer, tiny_lm):
    """Scoring must reproduce generate's own per-step log-probs (same positions despite padding)."""
    torch.manual_seed(0)
    adapter = CausalLMAdapter(tokenizer, temperature=0.7)
    batch = adapter.generate(tiny_lm, EXAMPLES, 3, RolloutConfig(max_new_tokens=6, temperature=0.7))
    assert (batch.prompt_mask[:3] == 0).any()  # the short prompt is left padded
    out = tiny_lm.generate(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, do_sample=False,
                           max_new_tokens=1, output_logits=True, return_dict_in_generate=True,
                           pad_token_id=tokenizer.pad_token_id)
    first_step = torch.log_softmax(out.logits[0] / 0.7, -1)
    expected = first_step.gather(-1, batch.completion_ids[:, :1]).squeeze(-1)
    with torch.no_grad():
        logp = adapter.log_probs(tiny_lm, batch)
    torch.testing.assert_close(logp[:, 0], expected, atol=1e-5, rtol=0)
    # and all positions equal a full-vocabulary log-softmax of a plain forward of prompt+completion
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], 1)
    with torch.no_grad():
        logits = tiny_lm(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    P = batch.prompt_ids.shape[1]
    full = torch.log_softmax(logits[:, P - 1:-1] / 0.7, -1).gather(-1, batch.completion_ids[..., None]).squeeze(-1)
    torch.testing.assert_close(logp, full, atol=1e-5, rtol=0)


def test_generate_groups_and_texts(tokenizer, tiny_lm):
    batch = CausalLMAdapter(tokenizer).generate(tiny_lm, EXAMPLES, 4, RolloutConfig(max_new_tokens=5))
    assert batch.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(batch.completions_text) == 8 and batch.examples[5] is EXAMPLES[1]
    assert batch.completion_ids.shape == (8, 5)


def test_encode_appends_eos_and_masks_padding(tokenizer):
    adapter = CausalLMAdapter(tokenizer)
    batch = adapter.encode(EXAMPLES, ["<answer>3</answer>", "18"])
    eos = tokenizer.eos_token_id
    lengths = batch.completion_mask.sum(-1).tolist()
    assert lengths[0] > lengths[1]
    for row, n in enumerate(lengths):
        assert batch.completion_ids[row, n - 1] == eos


def test_from_pretrained_on_a_local_directory(tmp_path, tokenizer):
    path = save_tiny(tmp_path / "ckpt", hidden_size=32, intermediate_size=64)
    model, tok = load_causal_lm(ModelConfig(name_or_path=str(path)))
    assert model.config.hidden_size == 32 and tok.chat_template
    batch = CausalLMAdapter(tok).generate(model, EXAMPLES[:1], 2, RolloutConfig(max_new_tokens=3))
    assert batch.completion_ids.shape[0] == 2
