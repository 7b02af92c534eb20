"""Video LLMs (Qwen2-VL, Qwen2.5-VL, Qwen3-VL on video prompts): frames, adapter, data, synthetic tasks."""
from mmrl.vlm.data import image_examples  # noqa: F401  (benchmark rows with images, as the vision-language family reads them)
from mmrl.vlm import config_sections as vision_sections
from video.adapter import VideoAdapter  # noqa: F401
from video.config import VideoConfig

config_sections = {**vision_sections, "model.video": VideoConfig}  # mmrl.modalities: the VLM's, then video's own


def build(cfg, training: bool = True):
    """(model, adapter) for a video run: the Qwen-VL model of mmrl.vlm with the video adapter
    (frame sampling and cache from model.video)."""
    from mmrl import vlm

    return vlm.build(cfg, training=training, adapter_cls=VideoAdapter,
                     sampling=cfg.model.video, cache_mb=cfg.model.video.cache_mb)


def training_examples(cfg, adapter):
    """(the video prompt rows of cfg.data, {"data/skipped": rows left out at load}): every video opened, or its
    sampled frames decoded (`data.video_check`), through the adapter's frame cache (mmrl.modalities)."""
    from video.data import load_video_examples

    check = adapter.frames.get if cfg.data.video_check == "decode" else adapter.check_open
    examples, skipped = load_video_examples(cfg.data, check, cfg.output_dir)
    return examples, {"data/skipped": skipped}
