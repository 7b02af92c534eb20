"""Throughput and hardware use of a run: tokens per second, time by phase, and an MFU estimate.

FLOPs are counted, not guessed from the config's batch shape: a forward pre-hook on the model that
holds the token layers (a transformers or diffusers model; inside DDP, PEFT or a policy wrapper)
adds, for each call, 2 N per input token (N = the parameters that multiply activations: all but the
input embedding table) plus the attention products 4 L d per (query token, key) pair, with the key
count taken from the attention mask (or the input length without one: an upper bound for a causal
prefill, exact for a decoding step and for a bidirectional mask predictor). A forward with gradient
enabled counts 3x (its backward is twice the forward). The vision tower's own encoding is not
counted. MFU = counted FLOPs / (step time x peak FLOPs of one device); the peak is
`trainer.peak_tflops`, else looked up for common GPUs when the compute dtype is bf16/fp16 (dense
tensor-core figures from the vendors' datasheets), else unknown (CPU): no MFU is logged then.
"""
from __future__ import annotations

import contextlib
import time

import torch

from mmrl.models.introspect import text_config_of

# dense bf16/fp16 tensor-core peaks, TFLOP/s per device (NVIDIA datasheets; H100/H200: SXM)
PEAK_BF16_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "B200": 2250.0, "L40S": 362.0, "A10G": 125.0}


def peak_tflops(configured: float | None, device: torch.device, compute_dtype: torch.dtype) -> float | None:
    """The peak TFLOP/s of one device: the configured one, else the table's for a known GPU computing in
    bf16/fp16, else None."""
    if configured is not None:
        return configured
    if device.type != "cuda" or compute_dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def token_model(module: torch.nn.Module) -> torch.nn.Module:
    """The outermost transformers / diffusers model in `module` (itself, or inside DDP, PEFT, a policy)."""
    from transformers import PreTrainedModel

    kinds: tuple = (PreTrainedModel,)
    try:
        from diffusers import ModelMixin
        kinds += (ModelMixin,)
    except ImportError:  # pragma: no cover - diffusers is a dependency
        pass
    for m in module.modules():
        if isinstance(m, kinds):
            return m
    return module


def shape_of(model: torch.nn.Module) -> tuple[int, int, int, int]:
    """(N: parameters that multiply activations, of which the output head's, layers, width) of the token
    model."""
    text = text_config_of(model) if hasattr(model, "config") else None
    layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "num_layers", 0) or 0)
    width = int(getattr(text, "hidden_size", 0) or getattr(text, "d_model", 0) or 0)
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    total = sum(p.numel() for p in model.parameters())
    if embedding is not None and (output is None or output.weight is not embedding.weight):
        total -= embedding.weight.numel()  # a lookup, not a matmul (a tied table is the output matmul)
    head = output.weight.numel() if output is not None else 0
    return total, head, layers, width


class FlopCounter:
    """Counts the FLOPs of every forward of the attached models (see the module docstring), and the
    wall time and FLOPs of named phases of a step."""

    def __init__(self):
        self.flops = 0.0
        self.phases: dict[str, float] = {}
        self.phase_flops: dict[str, float] = {}
        self.handles = []

    def attach(self, module: torch.nn.Module) -> None:
        target = token_model(module)
        n, head, layers, width = shape_of(target)

        def count(_, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
            if ids is None:
                ids = kwargs.get("inputs_embeds")
            if ids is None or ids.dim() < 2:
                return
            rows, length = ids.shape[0], ids.shape[1]
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            past = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
            mask = kwargs.get("attention_mask")
            keys = mask.shape[-1] if isinstance(mask, torch.Tensor) and mask.dim() >= 2 else past + length
            keep = kwargs.get("logits_to_keep", 0)  # the output head runs on the last `keep` positions only
            head_tokens = rows * min(keep, length) if isinstance(keep, int) and keep > 0 else \
                rows * len(keep) if isinstance(keep, torch.Tensor) and keep.dim() == 1 else rows * length
            tokens = rows * length
            flops = 2.0 * (n - head) * tokens + 2.0 * head * head_tokens + 4.0 * layers * width * tokens * keys
            self.flops += flops * (3.0 if torch.is_grad_enabled() else 1.0)

        self.handles.append(target.register_forward_pre_hook(count, with_kwargs=True))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def reset(self) -> None:
        self.flops, self.phases, self.phase_flops = 0.0, {}, {}

    @contextlib.contextmanager
    def phase(self, name: str, device: torch.device | None = None):
        """Time (synchronised on a GPU) and count the FLOPs of a phase of the step."""
        sync = device is not None and device.type == "cuda"
        if sync:
            torch.cuda.synchronize(device)
        t0, f0 = time.perf_counter(), self.flops
        try:
            yield
        finally:
            if sync:
                torch.cuda.synchronize(device)
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0
            self.phase_flops[name] = self.phase_flops.get(name, 0.0) + self.flops - f0


def step_throughput(accelerator, counter: FlopCounter, step_time: float, generated_tokens: int,
                    trained_tokens: int, peak: float | None) -> dict:
    """Per-device throughput of a step from this rank's counts, averaged over ranks: generation and
    training tokens/s, achieved TFLOP/s and MFU, and each phase's time (`time/<phase>_s`)."""
    rollout, update = counter.phases.get("rollout", 0.0), counter.phases.get("update", 0.0)
    names = sorted(counter.phases)  # every rank runs the same phases
    local = torch.tensor([generated_tokens / max(rollout, 1e-9), trained_tokens / max(update, 1e-9),
                          counter.flops / max(step_time, 1e-9) / 1e12, *(counter.phases[n] for n in names)],
                         device=accelerator.device)
    gen, train, tflops, *seconds = accelerator.reduce(local, "mean").tolist()
    out = {"perf/gen_tokens_per_s": gen, "perf/train_tokens_per_s": train, "perf/tflops": tflops}
    if peak:
        out["perf/mfu"] = tflops / peak
    out.update({f"time/{name}_s": s for name, s in zip(names, seconds)})
    return out
