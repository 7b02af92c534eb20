"""Frame sampling indices and sizes (hand-computed, qwen-vl-utils' rules), decoding real mp4 files
through decord, corrupt files, the frame cache and frame noise."""
import json
import logging

import pytest
import torch

from video.config import VideoConfig
from video.frames import (FrameCache, Video, VideoError, check_sampling, frame_indices, frame_size,
                          read_video)
from video.synthetic import COLOURS, first_colour, two_squares, write_mp4


def test_frame_indices_by_fps_and_by_count():
    # 16 frames at 8 fps = 2 s; 2 fps -> 4 frames, evenly spaced over 0..15
    assert frame_indices(16, 8.0, VideoConfig(fps=2.0, min_frames=4, max_frames=16)) == [0, 5, 10, 15]
    # 100 frames at 25 fps -> 8 frames: linspace(0, 99, 8) = 0, 14.14, 28.29, 42.43, 56.57, 70.71, 84.86, 99
    assert frame_indices(100, 25.0, VideoConfig(fps=2.0)) == [0, 14, 28, 42, 57, 71, 85, 99]
    # 300 frames at 30 fps -> 20 wanted, capped at max_frames 16
    assert len(frame_indices(300, 30.0, VideoConfig(fps=2.0, max_frames=16))) == 16
    # a short clip: 1 s at 2 fps = 2 frames, raised to min_frames 4
    assert frame_indices(10, 10.0, VideoConfig(fps=2.0, min_frames=4)) == [0, 3, 6, 9]
    assert frame_indices(16, 8.0, VideoConfig(nframes=2)) == [0, 15]
    assert len(frame_indices(16, 8.0, VideoConfig(nframes=5))) == 4  # counts are even (round(2.5) * 2)


def test_frame_size_per_frame_and_total_budget():
    small = VideoConfig(min_pixels=3136, max_pixels=3136)
    assert frame_size(56, 56, 4, small, 28) == (56, 56)
    # 16 frames of 480 x 640 with total_pixels 401,408: per-frame cap min(602,112, 401,408 / 16 * 2) = 50,176;
    # beta = sqrt(480 * 640 / 50,176) = 2.474 -> floor(480 / 2.474 / 28) * 28 = 168, floor(640 / 2.474 / 28) * 28 = 252
    budget = VideoConfig(min_pixels=3136, max_pixels=602_112, total_pixels=401_408)
    assert frame_size(480, 640, 16, budget, 28) == (168, 252)
    assert frame_size(480, 640, 16, VideoConfig(min_pixels=3136), 28) == (476, 644)  # under the cap: rounded


def test_sampling_checks_name_the_field():
    with pytest.raises(ValueError, match="min_frames"):
        check_sampling(VideoConfig(min_frames=8, max_frames=4))
    with pytest.raises(ValueError, match="nframes"):
        check_sampling(VideoConfig(nframes=1))


def test_read_back_a_written_mp4(tmp_path):
    frames = two_squares(COLOURS["red"], COLOURS["blue"], (0, 15), 56, 16)
    path = write_mp4(tmp_path / "clip.mp4", frames, fps=8)
    video = read_video(path, VideoConfig(fps=2.0, min_pixels=3136, max_pixels=3136), factor=28)
    assert video.frames.shape == (4, 3, 56, 56) and video.frames.dtype == torch.uint8
    assert video.indices == [0, 5, 10, 15] and video.metadata.fps == 8.0 and video.metadata.total_num_frames == 16
    red_cell, blue_cell = video.frames[:, :, 4:10, 4:10].float(), video.frames[:, :, 46:52, 46:52].float()
    assert (red_cell[:, 0] > 150).all() and (red_cell[:, 2] < 100).all()  # red throughout
    assert blue_cell[:2].max() < 40 and (blue_cell[2:, 2] > 150).all()  # blue from frame 8 on


def test_corrupt_missing_and_short_videos_raise_naming_the_file(tmp_path):
    good = write_mp4(tmp_path / "good.mp4", two_squares(COLOURS["red"], COLOURS["blue"], (0, 5), 56, 16), 8)
    (tmp_path / "cut.mp4").write_bytes(good.read_bytes()[:600])
    (tmp_path / "text.mp4").write_text("not a video")
    write_mp4(tmp_path / "one.mp4", two_squares(COLOURS["red"], COLOURS["blue"], (0, 5), 56, 1), 8)
    for name in ("cut.mp4", "text.mp4", "missing.mp4", "one.mp4"):
        with pytest.raises(VideoError, match=name):
            read_video(tmp_path / name, VideoConfig(nframes=2))


def test_cache_decodes_each_video_once_and_drops_the_oldest(tmp_path):
    rows = first_colour(3, seed=0, video_dir=tmp_path)
    size = 2 * 3 * 56 * 56  # bytes of one video: 2 frames, 3 channels, 56 x 56 (3136 pixels), uint8
    cache = FrameCache(VideoConfig(nframes=2, min_pixels=3136, max_pixels=3136), max_mb=2.5 * size / 2**20)
    a = cache.get(rows[0]["video"])
    assert a.frames.shape == (2, 3, 56, 56) and cache.bytes == size
    assert cache.get(rows[0]["video"]) is a and cache.decoded == 1
    cache.get(rows[1]["video"])
    cache.get(rows[0]["video"])  # now the most recently used
    cache.get(rows[2]["video"])  # over 2.5 videos' bytes: evicts rows[1], the least recently used
    assert len(cache) == 2 and cache.decoded == 3 and cache.bytes == 2 * size
    cache.get(rows[0]["video"])
    assert cache.decoded == 3
    cache.get(rows[1]["video"])
    assert cache.decoded == 4
    small = FrameCache(VideoConfig(nframes=2, min_pixels=3136, max_pixels=3136), max_mb=0.5 * size / 2**20)
    small.get(rows[0]["video"])  # larger than the whole budget: returned, not kept
    assert len(small) == 0 and small.bytes == 0


def test_frame_noise_is_seeded_and_has_the_requested_std():
    clip = Video(frames=torch.full((2, 3, 32, 32), 128, dtype=torch.uint8), metadata=None)
    assert clip.with_noise(0.0, 1) is clip
    a, b, c = clip.with_noise(0.1, 1), clip.with_noise(0.1, 1), clip.with_noise(0.1, 2)
    assert torch.equal(a.frames, b.frames) and not torch.equal(a.frames, c.frames)
    assert abs((a.frames.float() - 128).std().item() - 25.5) < 1.0  # 0.1 of the 0..255 range


def test_synthetic_rows_and_skipped_corrupt_rows(tmp_path, caplog):
    from mmrl.config import DataConfig
    from video.data import load_video_examples

    rows = first_colour(4, seed=0, video_dir=tmp_path / "v", multiple_choice=True)
    assert all(r["answer"] in "ABCD" and len(r["options"]) == 4 for r in rows)
    assert rows[0]["solution"].startswith("<think>") and " then " in rows[0]["solution"]
    (tmp_path / "bad.mp4").write_text("broken")
    lines = [{"video": rows[0]["video"], "question": "Which colour appears first?", "answer": "red"},
             {"video": "bad.mp4", "question": "q", "answer": "a"},
             {"video": "absent.mp4", "question": "q", "answer": "a"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    cache = FrameCache(VideoConfig(nframes=2, min_pixels=3136, max_pixels=3136))
    with caplog.at_level(logging.WARNING):
        examples, skipped = load_video_examples(DataConfig(source=str(tmp_path / "train.jsonl")), cache.get)
    assert skipped == 2 and len(examples) == 1 and "bad.mp4" in caplog.text
    content = examples[0]["prompt"][-1]["content"]
    assert content[0] == {"type": "video", "video": rows[0]["video"]} and content[1]["type"] == "text"
    with pytest.raises(ValueError, match="URL"):
        (tmp_path / "url.jsonl").write_text(json.dumps({"video": "https://x/y.mp4", "question": "q"}))
        load_video_examples(DataConfig(source=str(tmp_path / "url.jsonl")), cache.get)


@pytest.mark.parametrize("height,width,sampling", [
    # min = max = 63,504 (252^2): the 1.05 x min floor (66,679) must not lift the cap above max_pixels;
    # qwen-vl-utils gives 168 x 308 = 51,744 (the old order gave 196 x 336 = 65,856 > 63,504)
    (392, 672, dict(min_pixels=63504, max_pixels=63504)),
    # 1080p under a 900k cap: the 768-token per-frame ceiling (602,112) binds: 560 x 1008, not 700 x 1260
    (1080, 1920, dict(min_pixels=100352, max_pixels=900000)),
    # 4 frames sharing 401,408 pixels: the per-frame cap is 401,408 / 4 * 2 = 200,704 -> 364 x 504
    (480, 640, dict(min_pixels=3136, max_pixels=602112, total_pixels=401408)),
])
def test_frame_size_equals_qwen_vl_utils_on_the_same_video(tmp_path, monkeypatch, height, width, sampling):
    """read_video against qwen_vl_utils.fetch_video (decord backend) on the same mp4 file."""
    import numpy as np
    from qwen_vl_utils import vision_process

    monkeypatch.setattr(vision_process, "FORCE_QWENVL_VIDEO_READER", "decord")
    frames = np.zeros((4, height, width, 3), dtype=np.uint8)
    frames[:, : height // 2] = 200
    path = write_mp4(tmp_path / "clip.mp4", frames, fps=2)
    config = VideoConfig(fps=2.0, min_frames=4, max_frames=16, **sampling)
    ours = read_video(path, config, factor=28).frames
    theirs = vision_process.fetch_video({"video": str(path), "fps": 2.0, "min_frames": 4, "max_frames": 16,
                                         **sampling}, image_patch_size=14)
    assert tuple(ours.shape) == tuple(theirs.shape)
    expected = {392: (168, 308), 1080: (560, 1008), 480: (364, 504)}[height]
    assert tuple(ours.shape[-2:]) == expected


def test_fixed_frame_size():
    """DeepVideo-R1's 252 x 252 frames: a fixed size whatever the aspect ratio (pixel bounds ignored)."""
    assert frame_size(480, 640, 16, VideoConfig(resized_height=252, resized_width=252), 28) == (252, 252)
    with pytest.raises(ValueError, match="resized_height and resized_width"):
        check_sampling(VideoConfig(resized_height=252))
