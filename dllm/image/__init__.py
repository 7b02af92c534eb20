"""Masked image diffusion (aMUSEd / Meissonic-style MDMs) with Co-GRPO: the token model and a learned
inference-schedule policy trained in alternation by trajectory-level group-relative updates
(arXiv 2512.22288). See dllm/image/adapter.py for the trajectory layout and schedule.py for the
schedule policy (our design where the paper's is not public)."""
from __future__ import annotations

import torch

from dllm.image.config import ScheduleConfig
from mmrl.core.methods import METHODS, Method
from mmrl.core.policy import unwrapped_for_generation

PHASES = ("tokens", "schedule")
config_sections = {"model.schedule": ScheduleConfig}  # mmrl.modalities
shape_keys = ("model.schedule.steps",)  # the schedule policy's shape: resuming with another is refused


def build(cfg, training: bool = True):
    """(policy, adapter) for a Co-GRPO run: the aMUSEd pipeline from model.name_or_path, its transformer
    and a schedule policy (restored from the directory when it is an mmrl checkpoint) as one module."""
    import dllm.image.rewards  # noqa: F401  (registers colour_layout and clip_score)
    from dllm.image.adapter import MaskedImageAdapter
    from dllm.image.models import CoGRPOPolicy, load_amused
    from dllm.image.schedule import SchedulePolicy

    check(cfg)
    s = cfg.model.schedule
    pipeline = load_amused(cfg.model, seed=cfg.trainer.seed)
    policy = CoGRPOPolicy(pipeline.transformer, SchedulePolicy(s.init, s.init_std, guidance=s.guidance),
                          schedule_lr=s.lr)
    if cfg.model.name_or_path != "tiny":
        policy.load_schedule(cfg.model.name_or_path)
    if training and cfg.model.gradient_checkpointing:
        policy.transformer.enable_gradient_checkpointing()
    adapter = MaskedImageAdapter(pipeline, steps=s.steps, image_size=s.image_size, guidance=s.guidance,
                                 logprob_chunk_rows=cfg.trainer.logprob_chunk_rows)
    return policy, adapter


def check(cfg) -> None:
    """Config errors specific to masked image generation, named with the fix."""
    s = cfg.model.schedule
    if s.train not in ("alternate", *PHASES):
        raise ValueError(f"model.schedule.train={s.train!r}: use alternate, tokens or schedule")
    if s.lr is not None and s.lr <= 0:
        raise ValueError(f"model.schedule.lr must be > 0 (or null for optim.lr), got {s.lr}")
    if s.alternate_every < 1:
        raise ValueError(f"model.schedule.alternate_every must be >= 1, got {s.alternate_every}")
    if cfg.sft.steps > 0:
        raise ValueError("sft.steps: a supervised warm-up needs teacher-forced completions, which masked image "
                         "trajectories do not have; set sft.steps: 0 for model.modality: mdm")
    if cfg.eval.every > 0:
        raise ValueError("eval.every: the benchmarks grade text answers; set eval.every: 0 for model.modality: mdm "
                         "(the reward curve and samples_before_after.png show image quality)")
    if cfg.model.lora.enabled:
        raise ValueError("model.lora.enabled: LoRA is not wired for UVit2DModel here; train the full transformer")


def phase(cfg, step: int) -> str:
    """Which policy step `step` trains: Co-GRPO alternates tokens / schedule every `alternate_every` steps."""
    s = cfg.model.schedule
    return s.train if s.train != "alternate" else PHASES[(step // s.alternate_every) % 2]


def alternate_policies(cfg, accelerator, adapter, model, batch, step: int):
    """The loss mask of this step's phase (the token columns or the schedule column) and the schedule
    policy's current settings for the log; (batch, metrics)."""
    trains = phase(cfg, step)
    mask = torch.zeros_like(batch.completion_mask)
    if trains == "tokens":
        mask[:, :-1] = 1
    else:
        mask[:, -1] = 1
    batch.loss_mask = mask
    with unwrapped_for_generation(accelerator, model) as policy:  # gathered, if sharded
        schedule = policy.schedule
        stats = {f"schedule/{k}": v for k, v in schedule.settings().items()}
        stats["schedule/std_mean"] = float(schedule.log_std.detach().exp().mean())
    stats["cogrpo/trains_schedule"] = float(trains == "schedule")
    return batch, stats


@METHODS.register("cogrpo_alternation")
class CoGRPOAlternation(Method):
    """Masked image generation (model.modality: mdm): each step trains the token policy or the schedule
    policy (`model.schedule.train`, `alternate_every`), chosen after the rollout by the loss mask."""

    @classmethod
    def active(cls, loop) -> bool:
        return loop.cfg.model.modality == "mdm"

    def after_rollout(self, batch, step: int):
        loop = self.loop
        return alternate_policies(loop.cfg, loop.accelerator, loop.adapter, loop.model, batch, step)


def training_examples(cfg, adapter=None):
    """(the prompt rows of cfg.data, {}): the model family's data (mmrl.modalities)."""
    from mmrl.data import load_examples

    return load_examples(cfg.data), {}


evaluates_text = False  # images, graded by image rewards: scripts/eval.py's text benchmarks do not apply
