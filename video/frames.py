"""Video frames for Qwen-VL models: decoded with decord, sampled and sized by qwen-vl-utils' rules.

The number of frames and their indices follow qwen_vl_utils (`smart_nframes`: `fps` frames per
second within [min_frames, max_frames], or a fixed `nframes`, always even; indices evenly spaced
over the clip, rounded), and so does the frame size (`smart_resize` to multiples of patch * merge
within [min_pixels, max_pixels], the cap lowered so that all frames fit `total_pixels`). The
frames then go to the processor with their `VideoMetadata` (source fps, indices), which gives
Qwen2.5-VL its seconds per temporal patch and Qwen3-VL its timestamps.

Why not qwen_vl_utils.fetch_video itself: it picks torchcodec over decord when both are installed
and, on any read error, silently retries with torchvision's reader (gone in torchvision 0.29), so a
corrupt file surfaces as an unrelated error; and it keeps no cache. Here a decode error names the
file, and a `FrameCache` keeps decoded videos across the G rollouts of a group and across steps.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from video.config import VideoConfig


class VideoError(ValueError):
    """A video that cannot be opened or decoded; the message names the file."""


def check_sampling(sampling: VideoConfig) -> None:
    """Raise naming the model.video field that makes no sense."""
    if sampling.nframes is None and (sampling.fps is None or sampling.fps <= 0):
        raise ValueError("model.video: set fps > 0 or nframes")
    if sampling.nframes is not None and sampling.nframes < 2:
        raise ValueError(f"model.video.nframes={sampling.nframes}: at least 2 frames (one temporal patch)")
    if sampling.min_frames > sampling.max_frames:
        raise ValueError(f"model.video.min_frames={sampling.min_frames} exceeds max_frames={sampling.max_frames}")
    if sampling.min_pixels > sampling.max_pixels:
        raise ValueError(f"model.video.min_pixels={sampling.min_pixels} exceeds max_pixels={sampling.max_pixels}")
    if (sampling.resized_height is None) != (sampling.resized_width is None):
        raise ValueError("model.video: set both resized_height and resized_width (a fixed frame size), or neither")


@dataclass
class Video:
    """Sampled frames [T, C, H, W] uint8, sized for the model, and where they came from."""
    frames: torch.Tensor
    metadata: object  # transformers.video_utils.VideoMetadata
    path: str = ""
    indices: list[int] = field(default_factory=list)

    def with_noise(self, sigma: float, seed: int) -> "Video":
        """A copy with i.i.d. Gaussian noise of std `sigma` (a fraction of the pixel range) on every
        frame, drawn from `seed` (the same noisy input for all rollouts of a group, and on resume)."""
        if sigma <= 0:
            return self
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(self.frames.shape, generator=gen) * (sigma * 255.0)
        noisy = (self.frames.float() + noise).round().clamp(0, 255).to(torch.uint8)
        return Video(frames=noisy, metadata=self.metadata, path=self.path, indices=self.indices)


def frame_indices(total_frames: int, video_fps: float, sampling: VideoConfig) -> list[int]:
    """Indices of the frames to decode: qwen_vl_utils.smart_nframes' count, evenly spaced, rounded."""
    from qwen_vl_utils.vision_process import smart_nframes

    if sampling.nframes is not None:
        element = {"nframes": sampling.nframes}
    else:
        element = {"fps": sampling.fps, "min_frames": sampling.min_frames, "max_frames": sampling.max_frames}
    count = smart_nframes(element, total_frames=total_frames, video_fps=video_fps)
    return torch.linspace(0, total_frames - 1, count).round().long().tolist()


def frame_size(height: int, width: int, num_frames: int, sampling: VideoConfig, factor: int) -> tuple[int, int]:
    """(height, width) each frame is resized to, by qwen_vl_utils.fetch_video's rule (0.0.14):
        cap = min(max_pixels, max(min(768 f^2, total_pixels / frames * 2), 1.05 min_pixels))
    with f = `factor` (768 tokens per frame at most; two frames share a temporal patch), then
    smart_resize within [min_pixels, cap]: `max_pixels` is a hard cap applied after the 1.05 x
    min_pixels floor. `resized_height` / `resized_width` give a fixed size instead (rounded to f)."""
    from qwen_vl_utils.vision_process import FRAME_FACTOR, VIDEO_MAX_TOKEN_NUM, smart_resize

    if sampling.resized_height is not None and sampling.resized_width is not None:
        return smart_resize(sampling.resized_height, sampling.resized_width, factor=factor)
    ceiling = max(min(VIDEO_MAX_TOKEN_NUM * factor * factor, sampling.total_pixels / num_frames * FRAME_FACTOR),
                  int(sampling.min_pixels * 1.05))
    return smart_resize(height, width, factor=factor, min_pixels=sampling.min_pixels,
                        max_pixels=min(sampling.max_pixels, ceiling))


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic, antialiased (as qwen_vl_utils), back to uint8."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    if frames.shape[-2:] == (height, width):
        return frames
    out = resize(frames, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8) if out.is_floating_point() else out


def read_video(path: str | Path, sampling: VideoConfig, factor: int = 28) -> Video:
    """Decode the sampled frames of `path` with decord and size them for a model whose patches
    merge to `factor` pixels (28 for Qwen2/2.5-VL, 32 for Qwen3-VL). Raises VideoError."""
    import decord
    from transformers.video_utils import VideoMetadata

    path = str(path)
    try:
        reader = decord.VideoReader(path, num_threads=1)
        total, fps = len(reader), float(reader.get_avg_fps())
        if total < 2:
            raise VideoError(f"video {path}: {total} frame(s); at least 2 are needed")
        indices = frame_indices(total, fps, sampling)
        frames = torch.from_numpy(reader.get_batch(indices).asnumpy()).permute(0, 3, 1, 2)
    except VideoError:
        raise
    except Exception as err:  # decord raises RuntimeError / DECORDError; smart_nframes ValueError
        raise VideoError(f"video {path} cannot be read: {str(err).splitlines()[0][:200]}") from None
    height, width = frame_size(frames.shape[2], frames.shape[3], len(indices), sampling, factor)
    metadata = VideoMetadata(total_num_frames=total, fps=fps, frames_indices=indices, video_backend="decord")
    return Video(frames=resize_frames(frames, height, width), metadata=metadata, path=path, indices=indices)


def check_video(path: str | Path, sampling: VideoConfig, decode: bool = True, factor: int = 28) -> None:
    """Raise VideoError if `path` cannot be opened (and, with `decode`, its sampled frames decoded)."""
    if decode:
        read_video(path, sampling, factor)
        return
    import decord
    try:
        if len(decord.VideoReader(str(path), num_threads=1)) < 2:
            raise VideoError(f"video {path}: fewer than 2 frames")
    except VideoError:
        raise
    except Exception as err:
        raise VideoError(f"video {path} cannot be opened: {str(err).splitlines()[0][:200]}") from None


class FrameCache:
    """Decoded, resized videos by path, the least recently used dropped while their frames take more
    than `max_mb` MiB (0: no cache). The G rollouts of a group, and later visits of a prompt, decode its
    video once. A memory budget, not a count: a count below the dataset's size decodes every video on
    every visit (the tiny video demo's 256 videos under the earlier 64-video cap: 73% of lookups)."""

    def __init__(self, sampling: VideoConfig, factor: int = 28, max_mb: float = 2048):
        self.sampling, self.factor, self.max_bytes = sampling, factor, int(max_mb * 2**20)
        self._videos: OrderedDict[str, Video] = OrderedDict()
        self.bytes = 0  # frames held
        self.decoded = 0  # videos decoded so far (cache misses)

    def get(self, path: str | Path) -> Video:
        key = str(path)
        if key in self._videos:
            self._videos.move_to_end(key)
            return self._videos[key]
        video = read_video(key, self.sampling, self.factor)
        self.decoded += 1
        size = video.frames.numel() * video.frames.element_size()
        if size <= self.max_bytes:
            self._videos[key], self.bytes = video, self.bytes + size
            while self.bytes > self.max_bytes:
                _, dropped = self._videos.popitem(last=False)
                self.bytes -= dropped.frames.numel() * dropped.frames.element_size()
        return video

    def __len__(self) -> int:
        return len(self._videos)
