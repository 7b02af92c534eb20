"""The video family's config section, `model.video` (registered by video, with mmrl.vlm's `model.vision`)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VideoConfig:
    """Video inputs (model.modality: video): frames decoded with decord, sampled and sized by the rules
    of qwen-vl-utils 0.0.14 (see video/frames.py). Its defaults, except max_frames (768 there) and
    total_pixels (there 0.9 x the model's sequence length in patches: 90.3M pixels at 128k tokens)."""
    fps: float | None = 2.0  # frames sampled per second of video (ignored when nframes is set)
    nframes: int | None = None  # a fixed number of frames instead (rounded to an even number)
    min_frames: int = 4  # bounds on the number of frames sampled at `fps`
    max_frames: int = 16
    min_pixels: int = 100_352  # per frame (128 * 28 * 28)
    max_pixels: int = 602_112  # per frame (768 * 28 * 28); a hard cap, also on the 1.05 x min_pixels floor
    total_pixels: int = 90_316_800  # all frames together: lowers the per-frame cap of long videos
    resized_height: int | None = None  # a fixed frame size instead of the pixel bounds (both set; rounded to
    resized_width: int | None = None  # multiples of 28, or 32 for Qwen3-VL), e.g. DeepVideo-R1's 252 x 252
    cache_mb: int = 2048  # decoded, resized frames kept in memory, in MiB (least recently used dropped; 0: none)
