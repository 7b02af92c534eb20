"""The model as generation and reference scoring need it, under DDP / FSDP2 / LoRA."""
from __future__ import annotations

import contextlib

from mmrl.core.sharding import gathered_for_generation


@contextlib.contextmanager
def unwrapped_for_generation(accelerator, model):
    """The bare model (no DDP wrapper; an FSDP2 model with its parameters gathered) for the duration
    of generation."""
    with gathered_for_generation(model):
        yield accelerator.unwrap_model(model)


@contextlib.contextmanager
def reference_policy(accelerator, model, ref_model):
    """The frozen reference: a separate copy, or (LoRA) the same model with adapters disabled."""
    if ref_model is not None:
        yield ref_model
    else:
        with accelerator.unwrap_model(model).disable_adapter():
            yield model
