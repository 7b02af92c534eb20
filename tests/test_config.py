import pytest

from mmrl.config import Config, ConfigError, load_config


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
