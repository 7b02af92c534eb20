"""FLOP counting and throughput metrics against hand-computed counts on a tiny model."""
import pytest
import torch

from mmrl.core.throughput import FlopCounter, peak_tflops, shape_of
from mmrl.models.tiny import build_tiny_causal_lm, build_tokenizer


@pytest.fixture(scope="module")
def model():
    return build_tiny_causal_lm(build_tokenizer(), hidden_size=32, intermediate_size=64, seed=0)


def test_the_counted_shape_leaves_out_the_embedding_lookup(model):
    n, head, layers, width = shape_of(model)
    assert head == model.get_output_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert (layers, width) == (2, 32)
    assert n == (total if tied else total - model.get_input_embeddings().weight.numel())


def test_a_forward_counts_2n_per_token_plus_attention_and_3x_with_gradient(model):
    n, _, layers, width = shape_of(model)
    counter = FlopCounter()
    counter.attach(torch.nn.ModuleList([model]))  # found inside a wrapper
    ids, mask = torch.randint(5, 100, (2, 5)), torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad(), counter.phase("score"):
        model(input_ids=ids, attention_mask=mask)
    by_hand = 2 * n * 10 + 4 * layers * width * 10 * 5  # 10 tokens, each against 5 keys
    assert counter.flops == by_hand and counter.phase_flops["score"] == by_hand and counter.phases["score"] > 0
    model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    assert counter.flops == 4 * by_hand
    counter.detach()
    model(input_ids=ids)
    assert counter.flops == 4 * by_hand


def test_generation_counts_the_prefill_and_each_decoding_step(model):
    """3 rows of a 4-token prompt, 3 new tokens (no EOS: min_new_tokens): the prefill is 12 tokens against
    4 keys (the output head on the last position of each row only), then each of the 2 further steps
    3 tokens against 5 and 6 keys (the cache's 4 and 5, plus itself)."""
    n, head, layers, width = shape_of(model)
    counter = FlopCounter()
    counter.attach(model)
    ids = torch.randint(5, 100, (3, 4))
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, min_new_tokens=3,
                       do_sample=False, pad_token_id=0)
    by_hand = sum(2 * (n - head) * t + 2 * head * 3 + 4 * layers * width * t * k for t, k in ((12, 4), (3, 5), (3, 6)))
    assert counter.flops == by_hand


def test_the_peak_is_configured_or_known_and_absent_on_cpu():
    assert peak_tflops(None, torch.device("cpu"), torch.bfloat16) is None
    assert peak_tflops(400.0, torch.device("cpu"), torch.float32) == 400.0


def test_a_run_logs_throughput_and_phase_times(tmp_path):
    from tests.integration.helpers import run_text

    log, _ = run_text(tmp_path, "trainer.max_steps=2")
    last = log.history[-1]
    for key in ("perf/gen_tokens_per_s", "perf/train_tokens_per_s", "perf/tflops", "time/rollout_s",
                "time/logprobs_s", "time/advantage_s", "time/update_s"):
        assert last[key] > 0, key
    assert "perf/mfu" not in last  # no peak on CPU
    phases = sum(last[f"time/{p}_s"] for p in ("rollout", "logprobs", "advantage", "update"))
    assert phases <= last["time/step_s"]
    assert "throughput per device" in log.summary()
