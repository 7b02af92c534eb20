"""Video LLMs (Qwen2-VL, Qwen2.5-VL, Qwen3-VL on video prompts): frames, adapter, data, synthetic tasks."""
from video.adapter import VideoAdapter  # noqa: F401


def build(cfg, training: bool = True):
    """(model, adapter) for a video run: the Qwen-VL model of mmrl.vlm with the video adapter
    (frame sampling and cache from model.video)."""
    from mmrl import vlm

    return vlm.build(cfg, training=training, adapter_cls=VideoAdapter,
                     sampling=cfg.model.video, cache_videos=cfg.model.video.cache_videos)
