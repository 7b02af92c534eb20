"""What a new user runs into in the first hour: a second run in the same output_dir, a resume with no
checkpoint yet, rewards that fail, a non-finite loss, an unwritable output_dir, bad rows, trackers,
a resume with another config, LoRA checkpoints."""
import importlib.util
import json
import logging

import pytest
import torch

from mmrl.config import ModelConfig, load_config
from mmrl.core import checkpoint, losses
from mmrl.core.run_dir import claim_output_dir
from mmrl.models.loading import load_causal_lm
from mmrl.rewards import REWARDS

from .helpers import ROOT, run_text


def metric_lines(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_second_run_in_the_same_output_dir_is_refused_and_overwrite_starts_over(tmp_path):
    """Before: the second run wiped metrics.jsonl without a word, and the keep-2 rotation deleted its
    first checkpoint at once (the old run's later step numbers sorted after it)."""
    run_text(tmp_path, "trainer.max_steps=3", "trainer.save_every=1")
    with pytest.raises(ValueError, match=r"output_dir: .* already holds a run \(metrics.jsonl with 3 logged steps "
                                         r"and checkpoints step_000002, step_000003\). Continue it with "
                                         r"resume_from=latest, .* overwrite_output_dir=true"):
        run_text(tmp_path, "trainer.max_steps=1")
    assert len(metric_lines(tmp_path)) == 3
    run_text(tmp_path, "trainer.max_steps=1", "overwrite_output_dir=true")
    assert [r["step"] for r in metric_lines(tmp_path)] == [1]
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_000001"]


def test_rotation_never_deletes_the_checkpoint_just_written(tmp_path):
    for step in (10, 20, 2):
        checkpoint.checkpoint_dir(tmp_path, step).mkdir(parents=True)
    assert checkpoint.rotated(tmp_path, 2, keep=2) == []  # 10 and 20 are of another (later) timeline
    checkpoint.checkpoint_dir(tmp_path, 1).mkdir()
    checkpoint.checkpoint_dir(tmp_path, 3).mkdir()
    assert [p.name for p in checkpoint.rotated(tmp_path, 3, keep=2)] == ["step_000001"]
    assert checkpoint.rotated(tmp_path, 3, keep=0) == []


def test_resume_latest_without_a_checkpoint_says_so_and_appends_the_metrics(tmp_path, caplog):
    """Before: it started over silently and truncated metrics.jsonl (6 lines to 1)."""
    tmp_path.mkdir(exist_ok=True)
    crashed = [{"step": s, "reward/mean": 0.1 * s} for s in range(1, 7)]  # a run that died before its first save
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in crashed))
    with caplog.at_level(logging.WARNING):
        run_text(tmp_path, "trainer.max_steps=1", "resume_from=latest")
    assert "resume_from=latest: " in caplog.text and "has no checkpoint yet" in caplog.text
    lines = metric_lines(tmp_path)
    assert lines[:6] == crashed and [r["step"] for r in lines[6:]] == [1]


def test_resume_keeps_the_superseded_metrics(tmp_path):
    run_text(tmp_path, "trainer.max_steps=2", "trainer.save_every=1", "trainer.save_total_limit=0")
    run_text(tmp_path, "trainer.max_steps=2", f"resume_from={checkpoint.checkpoint_dir(tmp_path, 1)}")
    assert [r["step"] for r in metric_lines(tmp_path)] == [1, 2]
    superseded = [json.loads(line) for line in (tmp_path / "metrics.superseded.jsonl").read_text().splitlines()]
    assert [r["step"] for r in superseded] == [2]


@pytest.fixture
def nan_reward():
    """Accuracy, but NaN on completions of an odd number of characters."""
    from mmrl.rewards.math import accuracy_math

    @REWARDS.register("_test_nan_on_odd")
    def nan_on_odd(completions, examples, completion_lengths=None):
        return [float("nan") if len(c) % 2 else v for c, v in zip(completions, accuracy_math(completions, examples))]
    yield "_test_nan_on_odd"
    del REWARDS["_test_nan_on_odd"]


def test_a_reward_returning_nan_drops_its_groups_and_the_run_goes_on(tmp_path, nan_reward):
    """Before: the run died at step 1 in the progress bar's formatting (TypeError: unsupported format
    string passed to NoneType.__format__)."""
    log, _ = run_text(tmp_path, "trainer.max_steps=2", f"rewards=[{{name: {nan_reward}}}]", "sft.steps=0")
    last = log.history[-1]
    assert last[f"reward/{nan_reward}/errors"] > 0 and last["reward/errors"] == last[f"reward/{nan_reward}/errors"]
    assert 0 < last["reward/dropped_groups"] <= 4 and last["reward/mean"] is not None
    assert last["nonfinite/skipped_updates"] == 0


def test_a_reward_failing_on_every_sample_trains_on_nothing_or_stops_the_run(tmp_path):
    broken = "rewards=[{name: format, params: {pattern: null}%s}]"  # re.fullmatch(None, ...) raises TypeError
    with pytest.raises(RuntimeError, match="reward 'format' failed on 16 of 16 samples .*TypeError.*on_error"):
        run_text(tmp_path / "b", "trainer.max_steps=1", "sft.steps=0", broken % ", on_error: raise")
    log, _ = run_text(tmp_path / "c", "trainer.max_steps=1", "sft.steps=0", broken % "")
    assert log.history[-1]["reward/dropped_groups"] == 4 and log.history[-1]["advantage/abs_mean"] == 0
    assert log.history[-1]["loss/total"] == 0


def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    compute = losses.compute

    def nan_loss(*args, **kwargs):
        loss, stats = compute(*args, **kwargs)
        return loss * float("nan"), stats
    monkeypatch.setattr(losses, "compute", nan_loss)
    with pytest.raises(FloatingPointError, match="2 steps in a row had a non-finite loss.*max_nonfinite_steps=2"):
        run_text(tmp_path, "trainer.max_steps=5", "trainer.max_nonfinite_steps=2", "sft.steps=0",
                 "trainer.save_every=1")
    lines = metric_lines(tmp_path)
    assert [r["nonfinite/skipped_updates"] for r in lines] == [1, 1] and lines[-1]["loss/total"] is None
    # the crashed run has its reward curve (drawn at each checkpoint, not only at the end)
    assert (tmp_path / "reward_curve.png").stat().st_size > 1000


def test_the_progress_bar_names_the_method_and_shows_what_moves():
    from mmrl.core.trainer import method_label, progress_fields

    cfg = load_config(ROOT / "configs" / "tiny_text_grpo.yaml", ["algorithm.loss=gspo", "algorithm.beta=0.04",
                                                                   "sampler.name=dynamic_filter"])
    assert method_label(cfg) == "gspo+grpo+dynamic_filter+kl0.04"
    record = {"reward/mean": 0.41234, "reward/accuracy_math/mean": 0.25, "reward/format/mean": None, "kl/mean": 0.00123,
              "policy/entropy": 2.5, "loss/total": -0.0, "nonfinite/skipped_updates": 0}
    assert progress_fields(record, ["accuracy_math", "format"]) == {
        "reward": "0.412", "accuracy_math": "0.25", "format": "nan", "kl": "0.00123", "entropy": "2.5"}


def test_make_demo_twice_refuses_and_says_what_to_do(tmp_path):
    argv = ["--config", str(ROOT / "configs" / "tiny_text_grpo.yaml"), f"output_dir={tmp_path}", "trainer.max_steps=1",
            "sft.steps=0", "trainer.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4"]
    script_main("train_text")(argv)
    with pytest.raises(SystemExit, match=r"^mmrl: output_dir: .* already holds a run .*Continue it with "
                                         r"resume_from=latest, start over and delete it with overwrite_output_dir=true"):
        script_main("train_text")(argv)


def script_main(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_an_unwritable_output_dir_fails_before_the_model_is_built(tmp_path, monkeypatch):
    """Before: a raw NotADirectoryError after the whole warm-up."""
    from mmrl import text

    monkeypatch.setattr(text, "build", lambda cfg: pytest.fail("the model was built"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"mmrl: output_dir: '.*file/run' cannot be written \(NotADirectoryError"):
        script_main("train_text")(["--config", str(ROOT / "configs" / "tiny_text_grpo.yaml"),
                                   f"output_dir={tmp_path / 'file' / 'run'}"])
    cfg = load_config(None, [f"output_dir={tmp_path / 'fresh' / 'deeper'}"])
    assert claim_output_dir(cfg).is_dir() and not list((tmp_path / "fresh" / "deeper").iterdir())


def test_row_errors_name_the_file_and_line(tmp_path):
    from mmrl.data import load_examples

    def load(*rows, extra=()):
        path = tmp_path / "rows.jsonl"
        path.write_text("\n".join(rows) + "\n")
        return load_examples(load_config(None, [f"data.source={path}", *extra]).data)

    with pytest.raises(ValueError, match=r"rows.jsonl:2: a row must be a JSON object .* got int 7"):
        load('{"question": "1+1", "answer": "2"}', "7")
    with pytest.raises(ValueError, match=r"rows.jsonl:3: no field 'problem' \(data.prompt_field\)"):
        load('{"problem": "a"}', "", '{"question": "b"}', extra=["data.prompt_field=problem", "data.prompt_template='{problem}'"])
    with pytest.raises(ValueError, match=r"rows.jsonl:2: not valid JSON"):
        load('{"question": "a"}', "{oops")


def test_a_row_without_the_answer_is_refused_when_a_reward_grades_against_it(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "1+1", "answer": "2"}\n{"question": "2+2"}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl:2: no field 'answer' \(data.answer_field\), which reward "
                                         r"'accuracy_math' grades against"):
        run_text(tmp_path / "run", f"data.source={path}", "trainer.max_steps=1")
    # a reward that reads no answer (format only) trains on the same rows
    run_text(tmp_path / "run2", f"data.source={path}", "trainer.max_steps=1", "sft.steps=0",
             "rewards=[{name: format, params: {pattern: '\\d+'}}]", "trainer.prompts_per_step=2")


def test_loss_params_errors_list_only_what_the_config_may_set():
    with pytest.raises(ValueError) as err:
        losses.LOSSES.check_params("grpo", {"epsilon": 0.2}, "algorithm.loss_params", skip=losses.CONTEXT_ARGS)
    message = str(err.value)
    assert "'eps'" in message and "'eps_high'" in message
    for internal in ("'logp'", "'mask'", "'advantages'", "'old_logp'"):
        assert internal not in message, message


def test_tensorboard_gets_the_metrics_of_metrics_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_text(tmp_path, "trainer.max_steps=2", "trainer.log_with=[tensorboard]", "trainer.run_name=tb")
    events = EventAccumulator(str(tmp_path / "trackers" / "tb")).Reload()
    lines = metric_lines(tmp_path)
    for key in ("reward/mean", "reward/accuracy_math/mean", "loss/total", "policy/entropy"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in lines], rel=1e-6)


def test_wandb_offline_and_tensorboard_at_once(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_text(tmp_path, "trainer.max_steps=2", "trainer.log_with=[wandb, tensorboard]")
    # run.finish() only asks wandb-core to close the run (a message it does not wait on), and wandb-core
    # holds the records in a 32 KiB block until it closes the file: read right after finish() on a busy
    # machine, the file was its 7-byte header alone. teardown() waits for wandb-core to exit (as atexit does).
    import wandb

    wandb.teardown()
    # the offline run file (protobuf records, each history value stored as its JSON text): every step's entropy
    (run_file,) = (tmp_path / "trackers" / "wandb").glob("offline-run-*/run-*.wandb")
    stored = run_file.read_bytes()
    for line in metric_lines(tmp_path):
        assert b"policy/entropy" in stored and json.dumps(line["policy/entropy"]).encode() in stored
    assert list((tmp_path / "trackers" / tmp_path.name).glob("events.out.tfevents.*"))


def test_an_unknown_or_missing_tracker_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"trainer.log_with: \['nope'\] not a tracker accelerate knows"):
        run_text(tmp_path, "trainer.max_steps=1", "trainer.log_with=[nope]")
    pytest.importorskip("tensorboard")  # installed with the dev extra; aim is not
    with pytest.raises(ValueError, match=r"trainer.log_with: \['aim'\] not installed: pip install aim"):
        run_text(tmp_path, "trainer.max_steps=1", "trainer.log_with=[tensorboard, aim]")


def test_resuming_with_another_config_warns_and_another_model_shape_is_refused(tmp_path, caplog):
    run_text(tmp_path, "trainer.max_steps=1")
    latest = "resume_from=latest"
    with pytest.raises(ValueError, match=r"another shape .*model.tiny.hidden_size: 64 -> 32"):
        run_text(tmp_path, "trainer.max_steps=2", latest, "model.tiny.hidden_size=32")
    with caplog.at_level(logging.WARNING):
        run_text(tmp_path, "trainer.max_steps=2", latest, "algorithm.loss_params={eps: 0.1}", "trainer.log_every=5")
    assert "2 key(s) differ: algorithm.loss_params.eps: 0.2 -> 0.1; algorithm.loss_params.eps_high: 0.28 -> None" \
        in caplog.text


def test_lora_checkpoints_name_their_base_and_can_be_merged(tmp_path):
    from mmrl import text

    base_dir = tmp_path / "base"
    cfg = load_config(ROOT / "configs" / "tiny_text_grpo.yaml", [])
    model, adapter = text.build(cfg, training=False)
    model.save_pretrained(base_dir)
    adapter.save_pretrained(base_dir)
    _, trained = run_text(tmp_path / "run", "trainer.max_steps=1", "model.lora.enabled=true", "model.lora.r=4",
                          f"model.name_or_path={base_dir}", "sft.steps=0", "trainer.save_merged_model=true",
                          "optim.lr=0.05")
    ckpt = checkpoint.checkpoint_dir(tmp_path / "run", 1)
    adapter_config = json.loads((ckpt / "model" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(base_dir.resolve())
    from_adapter, _ = load_causal_lm(ModelConfig(name_or_path=str(ckpt / "model")))
    merged, _ = load_causal_lm(ModelConfig(name_or_path=str(ckpt / "merged")))
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = trained.eval()(ids).logits
        torch.testing.assert_close(merged(ids).logits, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(from_adapter(ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_repeated_library_warnings_are_shown_once(caplog):
    import warnings

    from mmrl.config import quiet_repeated_warnings

    with warnings.catch_warnings(record=True) as caught:
        quiet_repeated_warnings()
        for _ in range(3):
            warnings.warn("`past_key_values` is deprecated", FutureWarning)
            logging.getLogger("accelerate.utils.other").warning("Removed shared tensor {'lm_head.weight'} while saving")
    assert len([w for w in caught if "past_key_values" in str(w.message)]) == 1
    assert caplog.text.count("Removed shared tensor") == 1
