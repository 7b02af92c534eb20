"""Video prompts: jsonl rows with `video` (a local path) and a question (optional `options`), or a
synthetic video task (video.synthetic) generated as mp4 files.

Every video is checked when the data is loaded, by decoding its sampled frames (`data.video_check:
decode`, which also fills the adapter's frame cache) or only opening it (`open`, faster on large
sets): a missing, corrupt or too short video drops its row (counted, logged as `data/skipped`) and
the run continues. URLs are refused: nothing is downloaded at run time.
"""
from __future__ import annotations

import logging
from pathlib import Path

from mmrl.data import read_jsonl, resolve_source, row_label
from mmrl.vlm.data import vision_examples
from video import synthetic
from video.frames import VideoError

log = logging.getLogger(__name__)
CHECKS = ("decode", "open")


def video_paths(row: dict, field: str, index: int, base: Path) -> list[Path]:
    value = row.get(field)
    if value is None:
        raise ValueError(f"{row_label(row, index)}: no field '{field}' (data.video_field); "
                         f"fields: {sorted(k for k in row if k != '_where')}")
    paths = []
    for v in value if isinstance(value, list) else [value]:
        if not isinstance(v, str):
            raise ValueError(f"{row_label(row, index)}: '{field}' must be a path or a list of paths, "
                             f"got {type(v).__name__}")
        if v.startswith(("http://", "https://")):
            raise ValueError(f"{row_label(row, index)}: video '{v}' is a URL; mmrl does not download at run time. "
                             f"Download it and put the local path in the '{field}' field")
        p = Path(v[7:] if v.startswith("file://") else v)
        paths.append(p if p.is_absolute() else base / p)
    return paths


def load_video_examples(data_cfg, check, output_dir: str = ".") -> tuple[list[dict], int]:
    """(examples, rows skipped for an unreadable video) of `data_cfg.source`. `check(path)` raises
    VideoError for a bad video (the adapter's frame cache `.get` decodes and keeps the frames)."""
    if data_cfg.video_check not in CHECKS:
        raise ValueError(f"data.video_check: '{data_cfg.video_check}' is not one of {CHECKS}")
    if data_cfg.source == "synthetic":
        s = data_cfg.synthetic
        if s.task not in synthetic.TASKS:
            raise ValueError(f"data.synthetic.task: '{s.task}' is not a video task; valid: {sorted(synthetic.TASKS)}")
        video_dir = s.video_dir or str(Path(output_dir) / "synthetic_videos")
        rows = synthetic.TASKS[s.task](s.num_examples, s.seed, video_dir, multiple_choice=s.multiple_choice)
        base = Path.cwd()
    else:
        path = resolve_source(data_cfg.source)
        rows, base = read_jsonl(path), path.parent
    base = Path(data_cfg.video_root) if data_cfg.video_root else base

    def entries(row: dict, index: int) -> list[dict] | None:
        paths = video_paths(row, data_cfg.video_field, index, base)
        for p in paths:
            try:
                check(p)
            except VideoError as err:
                log.warning("skipping %s: %s", row_label(row, index), err)
                return None
        return [{"type": "video", "video": str(p)} for p in paths]

    return vision_examples(rows, data_cfg, entries, "video")
