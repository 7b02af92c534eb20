"""FSDP2 units, config checks and the gathered-parameter rollout on one process (a process group of
one, as `trainer.sharding: fsdp2` makes for a plain `python` run). The two-process equality and
resume tests are in tests/distributed."""
import pytest
import torch

from mmrl.config import load_config
from mmrl.core import sharding
from mmrl.core.batch import RolloutBatch
from mmrl.models.tiny import build_tiny_causal_lm
from mmrl.vlm.tiny import build_tiny_vlm


def test_units_are_the_blocks_and_the_vision_tower(tokenizer):
    text = build_tiny_causal_lm(tokenizer, num_hidden_layers=3, seed=0)
    assert [type(m).__name__ for m in sharding.transformer_blocks(text)] == ["Qwen2DecoderLayer"] * 3
    assert sharding.separate_encoders(text) == []  # model.model holds the (tied) embeddings: root's
    vlm = build_tiny_vlm(tokenizer, seed=0)
    names = [type(m).__name__ for m in sharding.transformer_blocks(vlm)]
    assert names.count("Qwen2_5_VLDecoderLayer") == vlm.config.text_config.num_hidden_layers
    assert names.count("Qwen2_5_VLVisionBlock") == vlm.config.vision_config.depth
    assert sharding.separate_encoders(vlm) == [vlm.model.visual]


def test_models_without_no_split_modules_shard_their_repeated_blocks():
    class Net(torch.nn.Module):  # like diffusers' UVit2DModel: no _no_split_modules, lists of blocks
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Linear(4, 4)
            self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
            self.mixed = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.ReLU()])  # not repeated blocks
    net = Net()
    assert sharding.transformer_blocks(net) == list(net.layers)


@pytest.mark.parametrize("overrides, message", [
    (["trainer.sharding=zero3"], "trainer.sharding: 'zero3' is not one of none, fsdp2"),
    (["trainer.sharding=fsdp2", "trainer.mixed_precision=fp16"], "use bf16"),
    (["trainer.sharding=fsdp2", "trainer.fsdp.cpu_offload=true"], "set trainer.fsdp.cpu_offload: false"),
])
def test_bad_sharding_configs_name_the_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        sharding.check(load_config(None, overrides), "cpu")


def test_sharded_model_rolls_out_and_scores_as_the_whole_model(tokenizer):
    """One process, trainer.sharding: fsdp2: parameters become DTensors; generation inside
    gathered_for_generation samples what the whole model samples, and afterwards every unit is
    sharded again; log-probs and gradients (through the FSDP hooks) match the whole model's."""
    from accelerate import Accelerator
    from torch.distributed.tensor import DTensor

    from mmrl.config import RolloutConfig
    from mmrl.text import CausalLMAdapter

    whole = build_tiny_causal_lm(tokenizer, seed=0)
    sharded = sharding.place(build_tiny_causal_lm(tokenizer, seed=0), load_config(None, ["trainer.sharding=fsdp2"]),
                             Accelerator(cpu=True))
    assert sharding.is_sharded(sharded) and all(isinstance(p, DTensor) for p in sharded.parameters())
    adapter = CausalLMAdapter(tokenizer)
    examples = [{"prompt": "1+2=", "answer": "3"}, {"prompt": "4+4=", "answer": "8"}]
    outs = []
    for model in (whole, sharded):
        torch.manual_seed(5)
        with sharding.gathered_for_generation(model):
            outs.append(adapter.generate(model, examples, 3, RolloutConfig(max_new_tokens=6)))
    assert torch.equal(outs[0].completion_ids, outs[1].completion_ids)
    units = sharding.fsdp_units(sharded)
    assert len(units) == 3 and units[-1] is sharded
    assert all(isinstance(p, DTensor) for p in sharded.parameters())  # sharded again after the rollout
    batch: RolloutBatch = outs[0]
    grads = []
    for model in (whole, sharded):
        logp = adapter.log_probs(model, batch)
        (logp * batch.completion_mask).sum().backward()
        grads.append((logp.detach(), {n: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad)
                                      for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-5, rtol=0)
    assert grads[1][1].keys() == grads[0][1].keys()
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, atol=1e-5, rtol=1e-4, msg=name)
    optimizer = torch.optim.AdamW(sharded.parameters())
    optimizer.step()
    state = sharding.training_state_bytes(sharded, optimizer)
    params = sum(p.numel() * 4 for p in whole.parameters())
    assert state == {"parameters": params, "gradients": params, "optimizer": 2 * params + 4 * len(list(whole.parameters()))}
