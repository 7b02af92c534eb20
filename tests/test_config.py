import dataclasses

import pytest

from mmrl.config import Config, ConfigError, load_config, to_dict


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  max_steps: 5\noptim:\n  lr: 1e-3\nrewards:\n  - name: format\n")
    cfg = load_config(path, ["output_dir=/tmp/x", "trainer.max_steps=20", "algorithm.loss_params={eps: 0.1}",
                             "rewards.0.weight=0.5", "model.tiny.hidden_size=32"])
    assert isinstance(cfg, Config)
    assert cfg.output_dir == "/tmp/x" and cfg.trainer.max_steps == 20
    assert cfg.optim.lr == 1e-3  # yaml 1.1 reads '1e-3' as text; a float field takes it
    assert cfg.algorithm.loss_params == {"eps": 0.1}
    assert cfg.rewards[0].name == "format" and cfg.rewards[0].weight == 0.5
    assert cfg.model.tiny.hidden_size == 32 and cfg.model.tiny.num_hidden_layers == 2


@pytest.mark.parametrize("override,message", [
    (["trainer.max_stepz=3"], "unknown config key 'trainer.max_stepz' \\(did you mean 'max_steps'\\?\\)"),
    (["trainer.max_steps=abc"], "config key 'trainer.max_steps': expected int, got str 'abc'"),
    (["trainer.max_steps=1.5"], "config key 'trainer.max_steps': expected int"),
    (["optim.lr=fast"], "config key 'optim.lr': expected float"),
    (["model.gradient_checkpointing=3"], "config key 'model.gradient_checkpointing': expected bool"),
    (["bogus=1"], "unknown config key 'bogus'"),
    (["trainer.max_steps"], "not of the form key=value"),
    (["rewards.0.nme=x"], "unknown config key 'rewards.0.nme'"),
])
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  group_sise: 4\n")
    with pytest.raises(ConfigError, match="rollout.group_sise.*group_size"):
        load_config(path)


def test_shipped_configs_load():
    from pathlib import Path
    for path in sorted(Path(__file__).parents[1].joinpath("configs").glob("*.yaml")):
        load_config(path)


def test_a_model_familys_sections_belong_to_its_runs_only():
    from dllm.config import DiffusionConfig

    cfg = load_config(None, ["model.modality=dllm", "model.diffusion.block_length=8"])
    assert cfg.model.diffusion == DiffusionConfig(block_length=8) and not cfg.inpainting.enabled
    assert "diffusion" in to_dict(cfg)["model"] and "vision" not in to_dict(cfg)["model"]
    assert not hasattr(load_config(None, []).model, "diffusion")
    with pytest.raises(ConfigError, match=r"config key 'inpainting' belongs to the dllm model family "
                                          r"\(model.modality: dllm\); this config has model.modality: text"):
        load_config(None, ["inpainting.enabled=true"])
    with pytest.raises(ConfigError, match=r"'model.video' belongs to the video model family .* model.modality: vlm"):
        load_config(None, ["model.modality=vlm", "model.video.fps=1.0"])
    video = load_config(None, ["model.modality=video", "model.vision.max_pixels=3136", "model.video.nframes=4"])
    assert (video.model.vision.max_pixels, video.model.video.nframes) == (3136, 4)  # the VLM's section and its own


def test_a_resume_refuses_a_change_of_a_familys_shape_keys(tmp_path):
    import yaml

    from mmrl.core.checkpoint import check_resumed_config
    from mmrl.modalities import shape_keys

    saved = to_dict(load_config(None, ["model.modality=mdm"]))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    now = to_dict(load_config(None, ["model.modality=mdm", "model.schedule.steps=6"]))
    assert check_resumed_config(tmp_path, now) == ["model.schedule.steps"]  # without the family's keys: a warning
    with pytest.raises(ValueError, match=r"another shape .*model.schedule.steps: 12 -> 6"):
        check_resumed_config(tmp_path, now, shape_keys("mdm"))


def test_a_family_section_cannot_replace_a_common_one():
    from mmrl.config import with_sections

    @dataclasses.dataclass
    class Mine:
        r: int = 4

    with pytest.raises(ValueError, match="ModelConfig already has 'lora'"):
        with_sections(Config, {"model.lora": Mine})
    assert with_sections(Config, {"model.mine": Mine})().model.mine == Mine()
