"""The vision-language family's config section, `model.vision` (registered by mmrl.vlm: mmrl.modalities)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VisionConfig:
    """Image inputs of vision-language models (model.modality: vlm)."""
    min_pixels: int = 3136  # each image is resized (aspect kept) to between min_pixels and max_pixels
    max_pixels: int = 501_760
    freeze_tower: bool = False  # keep the vision encoder's weights fixed
    share_features: bool = True  # scoring: encode each prompt's images once per group, not per completion
