"""Synthetic video tasks with verifiable answers, written as real mp4 files (H.264 through PyAV) and
read back through decord like any dataset's videos. No downloads.

first_colour: two squares of different colours in a black frame; one is there from the start, the
other appears halfway through. "Which colour appears first?" (the colour's name, or with
`multiple_choice` the letter of the shuffled options).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 230), "yellow": (230, 210, 40)}


def write_mp4(path: str | Path, frames: np.ndarray, fps: int) -> Path:
    """Encode [T, H, W, 3] uint8 frames (even H, W) as H.264 mp4 at `fps`; written to a temporary
    name and renamed, so processes writing the same file concurrently never leave a partial one."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
    container = av.open(str(tmp), "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    os.replace(tmp, path)
    return path


def two_squares(first: tuple, second: tuple, cells: tuple[int, int], size: int, num_frames: int) -> np.ndarray:
    """[T, size, size, 3] frames: a square of colour `first` in grid cell cells[0] (a 4 x 4 grid)
    throughout, one of colour `second` in cells[1] from frame T // 2 on."""
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    side = size // 4
    for colour, cell, start in ((first, cells[0], 0), (second, cells[1], num_frames // 2)):
        x, y = (cell % 4) * side, (cell // 4) * side
        frames[start:, y + 1:y + side - 1, x + 1:x + side - 1] = colour
    return frames


def first_colour(num_examples: int, seed: int, video_dir: str | Path, multiple_choice: bool = False,
                 size: int = 56, num_frames: int = 16, fps: int = 8) -> list[dict]:
    """Rows {video, question, answer, thought, solution[, options]}; mp4 files under `video_dir` are
    reused when present (same seed and sizes give the same files)."""
    rng = random.Random(seed)
    names = list(COLOURS)
    folder = Path(video_dir) / f"first_colour_s{seed}_{size}px_{num_frames}f_{fps}fps"
    rows = []
    for i in range(num_examples):
        first, second = rng.sample(names, 2)
        cells = tuple(rng.sample(range(16), 2))
        path = folder / f"{i:05d}.mp4"
        if not path.exists():
            write_mp4(path, two_squares(COLOURS[first], COLOURS[second], cells, size, num_frames), fps)
        thought = f"{first} then {second}"
        row = {"id": f"first_colour-{i}", "video": str(path), "question": "Which colour appears first?",
               "answer": first, "thought": thought}
        if multiple_choice:
            options = rng.sample(names, len(names))
            row.update(question="Which colour appears first?", options=options, answer="ABCD"[options.index(first)])
        row["solution"] = f"<think>{thought}</think><answer>{row['answer']}</answer>"
        rows.append(row)
    return rows


TASKS = {"first_colour": first_colour}
