import json

import pytest

from mmrl.config import ModelConfig
from mmrl.core.metrics import METRICS
from mmrl.models.loading import load_causal_lm

from .helpers import run_text

REQUIRED = ["reward/mean", "reward/std", "reward/accuracy_math/mean", "reward/format/mean", "advantage/abs_mean",
            "reward/frac_degenerate_groups", "policy/entropy", "loss/clip_frac", "loss/clip_frac_low", "loss/clip_frac_high",
            "completion_length/mean", "loss/total", "optim/grad_norm", "optim/lr", "time/step_s", "run/world_size", "kl/mean"]


def test_short_run_logs_metrics_plots_and_saves_a_loadable_model(tmp_path):
    log, _ = run_text(tmp_path, "trainer.max_steps=3", "algorithm.beta=0.04")
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3]
    for key in REQUIRED:
        assert key in lines[-1], key
    assert lines[-1]["run/world_size"] == 1 and lines[-1]["optim/lr"] == pytest.approx(5e-4)
    assert [k for k in lines[-1] if "/" not in k] == ["step"]  # every metric is namespaced (loss/, kl/, optim/, ...)
    assert (tmp_path / "reward_curve.png").stat().st_size > 1000
    ckpt = tmp_path / "checkpoints" / "step_000003"
    assert (ckpt / "run_state.yaml").exists() and not list(tmp_path.glob("checkpoints/*.tmp"))
    model, _ = load_causal_lm(ModelConfig(name_or_path=str(ckpt / "model")))
    assert model.config.hidden_size == 64
    assert set(k for k in METRICS if "<" not in k) - {"perf/mfu"} <= set(lines[-1])  # no MFU without a peak (CPU)


def test_resume_continues_exactly(tmp_path):
    # beta > 0 (reference model), mu = 2 (old log-probs), accumulation, warm-up: all must resume exactly
    common = ["algorithm.beta=0.04", "algorithm.num_iterations=2", "trainer.gradient_accumulation_steps=2",
              "trainer.save_every=2", "optim.scheduler=cosine", "trainer.max_steps=4"]
    straight, _ = run_text(tmp_path / "a", *common)
    run_text(tmp_path / "b", *common[:-1], "trainer.max_steps=2", "optim.scheduler=cosine")
    # the interrupted run was told max_steps=2; cosine needs the same horizon, so the schedule is
    # compared on a fresh run's terms: resume with the full horizon from the step-2 checkpoint
    resumed, _ = run_text(tmp_path / "c", *common, f"resume_from={tmp_path / 'b' / 'checkpoints' / 'step_000002'}")
    a = {r["step"]: r for r in straight.history}
    c = {r["step"]: r for r in resumed.history}
    assert sorted(c) == [3, 4]
    for step in (3, 4):
        for key in ("loss/total", "reward/mean", "kl/mean", "optim/grad_norm", "completion_length/mean"):
            assert c[step][key] == a[step][key], (step, key)


def test_resume_latest_rewrites_metrics_as_one_run(tmp_path):
    run_text(tmp_path, "trainer.max_steps=2", "trainer.save_every=1")
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a step the crashed run logged but never saved
        f.write(json.dumps({"step": 3, "loss/total": 123.0}) + "\n")
    run_text(tmp_path, "trainer.max_steps=3", "resume_from=latest")
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["loss/total"] != 123.0


def test_lora_gradient_checkpointing_and_bf16_autocast(tmp_path):
    _, model = run_text(tmp_path, "trainer.max_steps=2", "model.lora.enabled=true", "model.lora.r=4",
                        "model.gradient_checkpointing=true", "trainer.mixed_precision=bf16", "algorithm.beta=0.04",
                        "sft.steps=0")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("override,message", [
    (["trainer.prompts_per_step=1", "rollout.group_size=2", "trainer.gradient_accumulation_steps=5"],
     "gradient_accumulation_steps=5"),
    (["sampler.name=spo_priority"], "advantage: spo"),
    (["algorithm.llds_coef=0.1"], "num_iterations >= 2"),
    (["sampler.name=vade", "sampler.params={decay: 0.2}"], "sampler.params.decay"),
    (["algorithm.advantage_params={state: 1}"], "set by the trainer"),
    (["algorithm.token_weighting=gtpo", "algorithm.token_weighting_params={weight: 2}"],
     "token_weighting_params.weight"),
    (["rollout.group_size=1"], "group_size=1"),
    (["algorithm.loss_params={epsilon: 0.2}"], "algorithm.loss_params.epsilon"),
    (["algorithm.advantage=nope"], "unknown advantage estimator 'nope'"),
    (["rewards=[{name: accuracy, weight: 1.0}]"], "unknown reward function 'accuracy'"),
    (["resume_from=/nonexistent/step_000002"], "not an mmrl checkpoint"),
])
def test_bad_config_fails_before_training(tmp_path, override, message):
    with pytest.raises((ValueError, KeyError), match=message):
        run_text(tmp_path, *override)


def test_processes_that_disagree_on_world_size_refuse_to_start(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2.*ACCELERATE_USE_CPU=true"):
        run_text(tmp_path, "trainer.max_steps=1")


def test_a_model_loaded_from_a_directory_trains_with_its_gradient_checkpointing(tmp_path, monkeypatch):
    """from_pretrained returns a model in eval mode, where transformers' gradient checkpointing is off (its
    layers checkpoint only when `self.training`): the update must run in training mode."""
    from mmrl.core import trainer
    from mmrl.models.tiny import save_tiny

    ckpt = save_tiny(tmp_path / "ckpt")
    calls, original = [], trainer.policy_update

    def counted(cfg, accelerator, adapter, model, *args, **kwargs):
        layer = accelerator.unwrap_model(model).model.layers[0]
        handle = layer.register_forward_hook(lambda *a: calls.append(layer.training and layer.gradient_checkpointing))
        try:
            return original(cfg, accelerator, adapter, model, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(trainer, "policy_update", counted)
    run_text(tmp_path / "run", f"model.name_or_path={ckpt}", "model.gradient_checkpointing=true", "sft.steps=0",
             "trainer.max_steps=1", "trainer.gradient_accumulation_steps=2", "trainer.prefix_sharing=false")
    assert calls == [True, True]  # 2 micro-batches, each through checkpointed layers
