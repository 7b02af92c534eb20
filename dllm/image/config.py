"""The masked image generators' config section, `model.schedule` (Co-GRPO), registered by dllm.image
(mmrl.modalities)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScheduleConfig:
    """Masked image generators (model.modality: mdm, Co-GRPO): the sampler and its schedule policy
    (dllm/image/schedule.py). `init` gives the schedule at the policy's initial mean; the defaults are
    aMUSEd's cosine schedule, untempered sampling and re-mask temperature linspace(2, 0)."""
    steps: int = 12  # sampler steps K per image
    image_size: int | None = None  # pixels per side (None: the VQ model's sample_size)
    guidance: bool = False  # classifier-free guidance (doubles every forward); its scale is then a schedule knob
    init: dict = field(default_factory=lambda: {"gamma": 1.0, "sample_temperature": 1.0, "remask_temperature": 2.0,
                                                "guidance_scale": 4.0})
    init_std: float = 0.2  # initial std of each knob's Gaussian (in log space)
    lr: float | None = None  # the schedule policy's learning rate (None: optim.lr)
    alternate_every: int = 1  # Co-GRPO's alternation: train the tokens for this many steps, then the schedule, ...
    train: str = "alternate"  # alternate | tokens | schedule: which policy the updates train
