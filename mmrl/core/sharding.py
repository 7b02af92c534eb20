"""Fully sharded data parallel training (`trainer.sharding: fsdp2`) with torch's `fully_shard`.

mmrl calls `fully_shard` itself rather than through an accelerate FSDP config, so the same code runs
on GPUs (nccl) and on CPU processes (gloo), where accelerate ignores its FSDP plugin; accelerate still
launches the processes and holds their state. Each transformer block is one FSDP unit (the classes a
model lists in `_no_split_modules`; for models without the list, e.g. diffusers' UVit2DModel, the
elements of its lists of repeated blocks), each encoder that transformers calls outside the root's
forward (a VLM's vision tower, through `get_image_features` before the generation loop) is another,
and the root holds the rest. Gradients are reduce-scattered (averaged over ranks, as DDP's) in fp32.

Generation gathers every unit once and keeps it gathered until the rollout ends
(`gathered_for_generation`), instead of re-gathering every layer at each decoding step.
"""
from __future__ import annotations

import contextlib
import logging
import warnings

import torch
from torch import nn

log = logging.getLogger(__name__)

MODES = ("none", "fsdp2")
# methods that run the model's parameters outside its forward: wrapped so FSDP gathers the root first
OUTSIDE_FORWARD = ("get_image_features", "get_video_features")


def check(cfg, device_type: str) -> None:
    """Config errors of `trainer.sharding`, named with the fix."""
    t = cfg.trainer
    if t.sharding not in MODES:
        raise ValueError(f"trainer.sharding: '{t.sharding}' is not one of {', '.join(MODES)}")
    if t.sharding == "none":
        return
    if t.mixed_precision == "fp16":
        raise ValueError("trainer.mixed_precision=fp16 needs a sharded gradient scaler, which mmrl does not "
                         "have: use bf16 (or load the model in model.dtype: bfloat16 with mixed_precision: no)")
    if t.fsdp.cpu_offload and device_type != "cuda":
        raise ValueError("trainer.fsdp.cpu_offload moves GPU parameters and optimizer state to the CPU: on CPU "
                         "processes they are there already; set trainer.fsdp.cpu_offload: false")


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def fsdp_units(model) -> list[nn.Module]:
    """Every FSDP unit of a sharded model, root last."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)][::-1]


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a model: instances of the classes its (sub)models list in
    `_no_split_modules`, else the elements of each ModuleList of >= 2 blocks of one class."""
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if blocks:
        return blocks
    return [child for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 1
            and len({type(c) for c in m}) == 1 and any(True for _ in m.parameters()) for child in m]


def separate_encoders(model: nn.Module) -> list[nn.Module]:
    """Nested pretrained models that do not hold the input embeddings: encoders (vision towers) that
    transformers calls before the language model's forward, e.g. while preparing `generate`'s inputs."""
    from transformers import PreTrainedModel

    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    out = []
    for name, m in model.named_modules():
        if not name or not isinstance(m, PreTrainedModel):
            continue
        if embeddings is not None and any(e is embeddings for e in m.modules()):
            continue
        out.append(m)
    return out


def place(model: nn.Module, cfg, accelerator) -> nn.Module:
    """`model` sharded over the launched processes. A single process (no process group: a plain
    `python` run, or resuming a sharded checkpoint on one machine) gets a group of one, so it runs the
    same code path (DTensor parameters, mixed-precision policy, sharded checkpoints)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        if accelerator.num_processes != 1:
            raise RuntimeError("trainer.sharding=fsdp2: several processes without a process group")
        backend = "nccl" if accelerator.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return shard(model, cfg, accelerator.device)


def shard(model: nn.Module, cfg, device: torch.device) -> nn.Module:
    """`fully_shard` the blocks, the separate encoders and the root of `model` over all processes
    (in place; the parameters become DTensor shards). Parameters keep their dtype (model.dtype) and
    compute in bf16 with trainer.mixed_precision: bf16; gradients are reduced in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard,
                                        register_fsdp_forward_method)

    world = torch.distributed.get_world_size()
    mesh = init_device_mesh(device.type, (world,))
    f = cfg.trainer.fsdp
    compute = torch.bfloat16 if cfg.trainer.mixed_precision == "bf16" else None
    kwargs = dict(mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32),
                  offload_policy=CPUOffloadPolicy(pin_memory=True) if f.cpu_offload else OffloadPolicy())
    units = {id(m) for m in [*transformer_blocks(model), *separate_encoders(model)]}
    if not units:
        log.warning("trainer.sharding=fsdp2: %s has no repeated blocks to shard one by one; the whole model is "
                    "one FSDP unit (gathered in full for every forward)", type(model).__name__)
    # children before parents (modules() lists parents first); each call moves its unit's parameters
    # and buffers to `device` and frees the full tensors, so a GPU never holds the whole model
    for m in reversed(list(model.modules())):
        if id(m) in units:
            fully_shard(m, reshard_after_forward=f.reshard_after_forward, **kwargs)
    # the root's parameters are needed again right at the start of backward: kept after forward
    fully_shard(model, reshard_after_forward=False, **kwargs)
    model._mmrl_reshard_after_forward = f.reshard_after_forward
    for name in OUTSIDE_FORWARD:
        if callable(getattr(model, name, None)):
            register_fsdp_forward_method(model, name)
    # get_image_features returns views (per-image splits) that nothing modifies in place; the sharded
    # gradients equal the unsharded ones (tests/distributed, VLM case)
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    return model


@contextlib.contextmanager
def gathered_for_generation(model):
    """Every unit's full parameters for the duration of a rollout (many forwards without gradient):
    gathered once, then sharded again afterwards. Memory: one full copy of the parameters per rank."""
    if not is_sharded(model):
        yield model
        return
    units = fsdp_units(model)
    for m in units:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for m in units:
            m.set_reshard_after_forward(model._mmrl_reshard_after_forward and m is not model, recurse=False)
            m.reshard()


def copy_parameters(source: nn.Module, target: nn.Module) -> None:
    """target's parameters := source's (the same module structure, sharded the same way or not)."""
    with torch.no_grad():
        for (name, p), (other, q) in zip(source.named_parameters(), target.named_parameters(), strict=True):
            if name != other:
                raise ValueError(f"parameter {name} of the source meets {other} of the target")
            q.copy_(p)


def grad_norm_value(norm) -> float:
    """A gradient norm as a float (the norm of DTensor gradients is a DTensor)."""
    from torch.distributed.tensor import DTensor

    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def clip_gradients(accelerator, model, max_norm: float) -> float:
    """Clip the global gradient norm (of sharded or whole gradients); returns the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    return grad_norm_value(accelerator.clip_grad_norm_(params, max_norm))


def local_bytes(tensors) -> int:
    """Bytes this rank holds of `tensors` (a DTensor counts only its local shard)."""
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total


def training_state_bytes(model, optimizer) -> dict:
    """Per-rank bytes of parameters, gradients and optimizer state."""
    params = list(model.parameters())
    optim = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return {"parameters": local_bytes(params), "gradients": local_bytes(p.grad for p in params),
            "optimizer": local_bytes(optim)}
