"""The model as generation and reference scoring need it, under DDP / DeepSpeed / LoRA."""
from __future__ import annotations

import contextlib

from accelerate.utils import DistributedType


@contextlib.contextmanager
def unwrapped_for_generation(accelerator, model):
    """The bare model, with ZeRO-3 shards gathered for the duration of generation."""
    unwrapped = accelerator.unwrap_model(model)
    ds = getattr(accelerator.state, "deepspeed_plugin", None)
    if accelerator.distributed_type == DistributedType.DEEPSPEED and ds is not None and ds.zero_stage == 3:
        import deepspeed
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield unwrapped
    else:
        yield unwrapped


@contextlib.contextmanager
def reference_policy(accelerator, model, ref_model):
    """The frozen reference: a separate copy, or (LoRA) the same model with adapters disabled."""
    if ref_model is not None:
        yield ref_model
    else:
        with accelerator.unwrap_model(model).disable_adapter():
            yield model
