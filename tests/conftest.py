import pytest

from mmrl.models.tiny import build_tiny_causal_lm, build_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture
def tiny_lm(tokenizer):
    return build_tiny_causal_lm(tokenizer, seed=0)


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Each in-process run builds its own Accelerator (mixed precision differs between tests), and a
    run with trainer.sharding: fsdp2 its own process group of one."""
    yield
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
    from accelerate.state import AcceleratorState, GradientState
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
