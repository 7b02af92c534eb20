"""The video adapter on tiny Qwen-VL models: videos reach the model, are decoded once per group,
batched rows equal rows alone, vision encoded once per group gives the plain gradients, images and
videos mix, frame noise changes the input, and a local checkpoint loads."""
import pytest
import torch
from PIL import Image

from mmrl.config import RolloutConfig
from mmrl.models.tiny import build_tokenizer
from mmrl.vlm.tiny import build_processor, build_tiny_vlm
from tests.vlm.test_adapter import assert_prompt_cache_equals_per_row_prefill, assert_shared_vision_gives_plain_gradients
from video import VideoAdapter
from video.config import VideoConfig
from video.synthetic import COLOURS, two_squares, write_mp4


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    specs = {"rb": ("red", "blue", (0, 15), 16), "gy": ("green", "yellow", (5, 10), 24), "br": ("blue", "red", (3, 12), 16)}
    return {name: str(write_mp4(root / f"{name}.mp4", two_squares(COLOURS[a], COLOURS[b], cells, 56, n), 8))
            for name, (a, b, cells, n) in specs.items()}


def make_adapter(tok, family="qwen2_5_vl", **kw):
    sampling = VideoConfig(fps=2.0, min_frames=4, max_frames=4, min_pixels=3136, max_pixels=3136)
    return VideoAdapter(build_processor(tok, 3136, 3136, family=family), sampling=sampling, min_pixels=3136,
                        max_pixels=3136, **kw)


def example(path, text="Which colour appears first?", image=None):
    content = ([{"type": "image", "image": image}] if image is not None else []) + \
        [{"type": "video", "video": path}, {"type": "text", "text": text}]
    return {"prompt": [{"role": "user", "content": content}], "answer": "red"}


def test_generate_decodes_each_video_once_and_keeps_video_extras(tok, clips):
    adapter, model = make_adapter(tok), build_tiny_vlm(tok, seed=0)
    exs = [example(clips["rb"]), example(clips["gy"])]
    out = adapter.generate(model, exs, [3, 2], RolloutConfig(max_new_tokens=4))
    adapter.generate(model, exs, 4, RolloutConfig(max_new_tokens=4))
    assert adapter.frames.decoded == 2  # 2 videos, 2 steps, 9 + 8 rollouts
    assert out.extras["num_videos"].tolist() == [1] * 5 and out.extras["video_grid_thw"][0, 0].tolist() == [2, 4, 4]
    # Qwen2.5-VL's seconds per temporal patch (2 frames): 4 frames of 16 at 8 fps are 2 fps -> 1.0 s;
    # 4 of 24 (max_frames caps the 6 that 2 fps would give) are 4/3 fps -> 1.5 s
    assert out.extras["second_per_grid_ts"][:, 0].tolist() == [1.0, 1.0, 1.0, 1.5, 1.5]
    torch.testing.assert_close(out.extras["pixel_values_videos"][0], out.extras["pixel_values_videos"][2])
    assert torch.isfinite(adapter.log_probs(model, out)).all()


def test_video_reaches_the_model_and_noise_changes_it(tok, clips):
    adapter, model = make_adapter(tok), build_tiny_vlm(tok, seed=0)
    model.eval()
    with torch.no_grad():
        def score(ex):
            return adapter.log_probs(model, adapter.encode([ex], ["<answer>red</answer>"]))
        a, b = score(example(clips["rb"])), score(example(clips["br"]))
        noisy = score({**example(clips["rb"]), "video_noise": {"sigma": 0.2, "seed": 1}})
    assert (a - b).abs().max() > 1e-4 and (a - noisy).abs().max() > 1e-4


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_batched_rows_equal_rows_alone_and_shared_encoding_gives_plain_gradients(tok, clips, family):
    """Videos of different lengths, one prompt also with an image: each row's log-probs in the batch
    equal the row alone, and encoding each group's video once, or packing each group's prompt once
    with its completions, gives the same gradients."""
    adapter, model = make_adapter(tok, family), build_tiny_vlm(tok, seed=0, family=family)
    exs = [example(clips["rb"]), example(clips["gy"], "Which?", image=Image.new("RGB", (56, 56), (0, 90, 200)))]
    out = adapter.generate(model, exs, [3, 2], RolloutConfig(max_new_tokens=5))
    assert out.extras["num_images"].tolist() == [0, 0, 0, 1, 1]
    model.eval()
    with torch.no_grad():
        together = adapter.log_probs(model, out)
        for row in (0, 3):
            alone = adapter.log_probs(model, out.select(slice(row, row + 1)))
            n = int(out.completion_mask[row].sum())
            torch.testing.assert_close(together[row, :n], alone[0, :n], atol=1e-5, rtol=0)
    assert_shared_vision_gives_plain_gradients(adapter, model, out)
    assert_shared_vision_gives_plain_gradients(adapter, model, out, switch="prefix_sharing")


def test_image_adapter_refuses_videos_naming_the_modality(tok, clips):
    from mmrl.vlm import VLMAdapter
    with pytest.raises(ValueError, match="model.modality: video"):
        VLMAdapter(build_processor(tok)).encode([example(clips["rb"])], ["x"])


def test_local_checkpoint_loads_through_the_video_build(tok, clips, tmp_path):
    import video
    from mmrl.config import load_config
    from mmrl.vlm.tiny import save_tiny_vlm

    ckpt = save_tiny_vlm(tmp_path / "ckpt")
    cfg = load_config(None, ["model.modality=video", f"model.name_or_path={ckpt}", "model.video.nframes=2",
                             "model.video.min_pixels=3136", "model.video.max_pixels=3136"])
    model, adapter = video.build(cfg, training=False)
    out = adapter.generate(model, [example(clips["rb"])], 2, RolloutConfig(max_new_tokens=3))
    assert out.extras["video_grid_thw"][0, 0].tolist() == [1, 4, 4] and len(out) == 2


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_shared_prompt_cache_generates_what_per_row_prefill_does_with_video(tok, clips, family):
    examples = [example(clips["rb"]), example(clips["gy"], "Which colour is last?", image=Image.new("RGB", (56, 56)))]
    assert_prompt_cache_equals_per_row_prefill(lambda **kw: make_adapter(tok, family, **kw),
                                               build_tiny_vlm(tok, seed=0, family=family), examples, [3, 2])
