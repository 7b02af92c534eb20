import os

import pytest
import torch

from mmrl.models.tiny import build_tiny_causal_lm, build_tokenizer


# One thread per test process, however pytest is invoked: `make test` runs two xdist workers on this
# 2-core machine (two threads each would oversubscribe it), and the learning tests' fixed-seed numbers
# depend on the thread count (a matmul's reduction order), so `pytest` alone gives the same numbers.
# Subprocesses (accelerate launches, scripts) inherit the variable.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Slow tests (learning demos, multi-process launches: minutes each) first, so that the two
    workers do not end with one of them running a long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
