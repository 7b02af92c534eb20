import torch

from mmrl.core.logprobs import selective_log_softmax


def test_chunked_selective_log_softmax_matches_plain_path_values_and_grads():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 11, requires_grad=True)
    index = torch.randint(0, 11, (5, 7))
    logp, ent = selective_log_softmax(logits, index, chunk_rows=2, with_entropy=True)
    plain = torch.log_softmax(logits, -1)
    ref = plain.gather(-1, index[..., None]).squeeze(-1)
    ref_ent = -(plain.exp() * plain).sum(-1)
    torch.testing.assert_close(logp, ref)
    torch.testing.assert_close(ent, ref_ent.detach())
    w = torch.randn(5, 7)
    (g,) = torch.autograd.grad((logp * w).sum(), logits)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), logits)
    torch.testing.assert_close(g, g_ref)


def test_bf16_logits_are_scored_in_fp32():
    logits = torch.randn(2, 3, 50).bfloat16()
    logp = selective_log_softmax(logits, torch.zeros(2, 3, dtype=torch.long))
    assert logp.dtype == torch.float32
    ref = torch.log_softmax(logits.float(), -1)[..., 0]
    torch.testing.assert_close(logp, ref)
