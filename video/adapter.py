"""Video adapter: the Qwen-VL adapter (mmrl.vlm) with video prompts.

A prompt's user turn holds `{"type": "video", "video": <local path>}` entries (and optionally
images) before its text. Frames are decoded by video.frames (decord; qwen-vl-utils' sampling and
sizing) through a FrameCache, so the G rollouts of a group, and later visits of the prompt, decode
the file once; the processor patches the frames once per prompt and the vision tower encodes them
once per group (mmrl.vlm.adapter). An example may carry `video_noise: {sigma, seed}` (set by the
difficulty-aware augmentation): Gaussian noise on every frame of its videos.
"""
from __future__ import annotations

from mmrl.vlm.adapter import VLMAdapter
from video.config import VideoConfig
from video.frames import FrameCache, check_sampling, check_video


class VideoAdapter(VLMAdapter):
    supports_frame_noise = True  # the difficulty-aware augmentation may perturb this adapter's inputs

    def __init__(self, processor, sampling: VideoConfig | None = None, cache_mb: float = 2048, **vlm_kwargs):
        super().__init__(processor, **vlm_kwargs)
        self.sampling = sampling or VideoConfig()
        check_sampling(self.sampling)
        video_processor = getattr(processor, "video_processor", None)
        patch = getattr(video_processor, "patch_size", self.patch_size)
        merge = getattr(video_processor, "merge_size", 2)
        self.frames = FrameCache(self.sampling, factor=patch * merge, max_mb=cache_mb)

    def check_open(self, path) -> None:
        """Raise VideoError unless `path` opens with at least 2 frames (data.video_check: open)."""
        check_video(path, self.sampling, decode=False)

    def load_vision(self, example: dict) -> tuple[list, list]:
        from qwen_vl_utils import fetch_image

        images, videos = [], []
        noise = example.get("video_noise")
        for element in self.vision_elements(example):
            if element["type"] == "image":
                images.append(fetch_image(dict(element, min_pixels=self.min_pixels, max_pixels=self.max_pixels),
                                          self.patch_size))
                continue
            source = element.get("video")
            if not isinstance(source, str):
                raise ValueError(f"a video entry must be a local file path, got {type(source).__name__}")
            video = self.frames.get(source[7:] if source.startswith("file://") else source)
            if noise:
                video = video.with_noise(float(noise["sigma"]), int(noise["seed"]))
            videos.append(video)
        return images, videos
