"""Two CPU processes over gloo give the same update as one process on the same global batch."""
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from tests.distributed.ddp_update import CLIP

ROOT = Path(__file__).parents[2]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
# A rendezvous port per pytest-xdist worker (gw0, gw1, ...): two workers' launches at the same time would
# otherwise both bind accelerate's default 29500. A worker's own launches run one at a time.
PORT = 29500 + 10 * int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
TWO_PROCS = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
             "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(PORT)]


def _env():
    return {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}


GLOO_ABORT = "terminate called without an active exception"
LIMIT_S = 600  # a launch that hangs (ranks out of step in a collective) fails its test instead of the CI job


def _launch_two(args: list[str]) -> None:
    """Run `accelerate launch` on two CPU processes. One retry when a rank aborted inside gloo's C++
    threads at exit (no Python error, after the work was done; seen twice in 4 fresh-clone CI runs on
    the suite's first launch, and once in ~30 launches of a later run, on the eval launch; never when
    run alone). The scripts' end_processes now synchronises, destroys the groups and collects garbage
    before the interpreter exits, the likeliest cause; the retry stays until CI runs show it gone, so a
    retry is reported as a warning in pytest's summary (with the launch's arguments and stderr tail).
    Any other failure, or a second abort, fails the test with the output."""
    for attempt in range(2):
        run = subprocess.run([*TWO_PROCS, *args], env=_env(), cwd=ROOT, timeout=LIMIT_S, capture_output=True, text=True)
        if run.returncode == 0:
            return
        if attempt or GLOO_ABORT not in run.stderr:
            raise AssertionError(f"two-process launch failed (rc {run.returncode}):\n{run.stderr[-3000:]}")
        warnings.warn(f"gloo abort at exit (rc {run.returncode}), retrying the launch {args}:\n{run.stderr[-1500:]}",
                      RuntimeWarning, stacklevel=2)


def _update_cases(tmp_path, kind: str, processes: int, mode: str) -> dict:
    """Run tests/distributed/ddp_update.py; its saved {"cases": ..., "world_size": ...}."""
    script, out = str(ROOT / "tests" / "distributed" / "ddp_update.py"), tmp_path / f"{kind}-{processes}-{mode}.pt"
    if processes == 1:
        subprocess.run([sys.executable, script, str(out), mode, kind], check=True, env=_env(), cwd=ROOT, timeout=LIMIT_S)
    else:
        _launch_two([script, str(out), mode, kind])
    saved = torch.load(out)
    assert saved["world_size"] == processes and saved["sharding"] == mode
    return saved["cases"]


def _initial_parameters(kind: str) -> dict:
    from mmrl.models.tiny import build_tiny_causal_lm, build_tokenizer
    from mmrl.vlm.tiny import build_tiny_vlm
    tok = build_tokenizer()
    model = build_tiny_causal_lm(tok, hidden_size=32, intermediate_size=64, seed=0) if kind == "text" \
        else build_tiny_vlm(tok, seed=0)
    return model.state_dict()


def _assert_updates_equal(kind: str, reference: dict, others: dict[str, dict]) -> None:
    """Every case of every run in `others` against the one-process update without accumulation of the
    same aggregation, num_iterations and variant (gradient checkpointing against the plain update):
    the same loss, gradient norm and parameters (to 1e-5)."""
    init = _initial_parameters(kind)
    for label, cases in others.items():
        for (aggregation, mu, accumulation, variant), other in cases.items():
            expected = reference[(aggregation, mu, 1, None if variant == "checkpointing" else variant)]
            if variant != "lora":
                moved = sum(int(not torch.equal(init[k], v)) for k, v in expected["params"].items())
                assert moved > 10, "the update should change the model"
            if mu > 1 and variant is None:
                assert expected["llds_active"] > 0, "LLDS should gate some tokens in the second update"
            where = f"{kind}, {aggregation}, num_iterations {mu}, {variant or 'plain'}, {label} GA {accumulation}"
            assert other["loss"] == pytest.approx(expected["loss"], abs=1e-5), where
            assert other["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-4), where
            if variant == "clipped":
                assert expected["grad_norm"] > 5 * CLIP, "the clip should act"
            assert other["params"].keys() == expected["params"].keys(), where
            for name, value in expected["params"].items():
                torch.testing.assert_close(other["params"][name], value, atol=1e-5, rtol=0, msg=f"{where}: {name}")


@pytest.fixture(scope="module")
def one_process_updates(tmp_path_factory):
    """kind -> the one-process DDP update cases (run once per module, the reference of the DDP and
    FSDP2 tests)."""
    cache = {}

    def get(kind: str) -> dict:
        if kind not in cache:
            cache[kind] = _update_cases(tmp_path_factory.mktemp(kind), kind, 1, "none")
        return cache[kind]
    return get


@pytest.mark.slow
def test_two_process_updates_equal_the_one_process_whole_batch_update(tmp_path, one_process_updates):
    """Each case (aggregation x num_iterations 1 / 2 x gradient accumulation 1 / 3, and LoRA) against the
    one-process update without accumulation: 2 processes with GA 1, and GA 3 on 8 rows per rank
    (micro-batches of 2, 3, 3 rows), and 1 process with GA 3 (5, 5, 6 rows), all with plain SGD at lr 1
    and no clipping, so the parameters differ from the reference exactly as the summed gradients do. A
    per-micro-batch or per-rank normaliser (token counts, LLDS's gated tokens) scales some gradients
    and fails here."""
    one = one_process_updates("text")
    two = _update_cases(tmp_path, "text", 2, "none")
    init = _initial_parameters("text")
    for case in (k for k in one if k[3] == "lora"):  # only the adapters train
        params = one[case]["params"]
        assert any("lora_B" in n and v.abs().sum() > 0 for n, v in params.items())
        for name, value in params.items():
            if "lora_" not in name:
                torch.testing.assert_close(value, init[name.replace("base_model.model.", "").replace(".base_layer", "")],
                                           rtol=0, atol=0, msg=name)
    _assert_updates_equal("text", one, {"1 process": one, "2 processes": two})


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["text", "vlm"])
def test_fsdp2_updates_equal_the_one_process_whole_batch_update(tmp_path, kind, one_process_updates):
    """trainer.sharding: fsdp2 on two processes (every block, the VLM's vision tower and the root
    sharded; reference model sharded the same way; or LoRA with its adapters disabled as the
    reference) gives the one-process DDP update: loss and every gathered parameter, with
    gradient accumulation 1 and 3, one or two inner updates, and gradient checkpointing; on text also
    with the gradient clipped (the norm of the whole gradient across shards)."""
    one = one_process_updates(kind)
    sharded = _update_cases(tmp_path, kind, 2, "fsdp2")
    assert any(k[3] == "checkpointing" for k in sharded)
    assert kind == "vlm" or {"lora", "clipped"} <= {k[3] for k in sharded}
    _assert_updates_equal(kind, one, {"2 processes fsdp2": sharded})


def _metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def _contains(pattern: str) -> str:
    """A reward that differs within the groups of a barely trained tiny model (the completion contains
    a match of `pattern`), so every step has advantages and a gradient to resume."""
    return f"rewards=[{{name: format, weight: 1.0, params: {{pattern: '{pattern}', mode: search}}}}]"


SHARDED_RECIPES = {
    "text": ("train_text.py", "tiny_text_grpo.yaml", ["sft.steps=20", "algorithm.beta=0.04", "algorithm.num_iterations=2",
                                                      "trainer.gradient_accumulation_steps=3", _contains("[0-4]")]),
    "vlm": ("train_vlm.py", "tiny_vlm_grpo.yaml", ["sft.steps=20", "algorithm.beta=0.04", "data.synthetic.num_examples=16",
                                                   "trainer.gradient_accumulation_steps=2", _contains("e")]),
    "dllm_igpo": ("train_dllm.py", "tiny_dllm_igpo.yaml", ["sft.steps=20", "algorithm.beta=0.04", _contains("[0-4]")]),
    "cogrpo": ("train_mdm.py", "tiny_mdm_cogrpo.yaml", ["model.schedule.steps=3"]),
}


def _saved_weights(output_dir: Path) -> dict:
    """Every tensor of the last checkpoint's from_pretrained model/ (and Co-GRPO's schedule policy)."""
    from safetensors.torch import load_file
    model = output_dir / "checkpoints" / "step_000003" / "model"
    weights = {f"{p.relative_to(model)}:{k}": v.tolist() for p in sorted(model.rglob("*.safetensors"))
               for k, v in load_file(p).items()}
    if (model / "schedule_policy.json").exists():
        weights["schedule"] = json.loads((model / "schedule_policy.json").read_text())
    assert weights
    return weights


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(SHARDED_RECIPES))
def test_fsdp2_recipe_trains_and_resumes_exactly(tmp_path, recipe):
    """A tiny recipe under trainer.sharding=fsdp2 on two processes: sharded checkpoints (.distcp) and a
    from_pretrained model/; a run resumed with resume_from=latest from the step-2 checkpoint logs step 3
    exactly as the uninterrupted run (every metric but the wall time) and saves the same weights. The
    text run then resumes on one process."""
    script, config, extra = SHARDED_RECIPES[recipe]
    if recipe == "cogrpo":  # the tiny pipeline saved once, not built (palette decoder fit) by every launch
        from dllm.image.models import save_tiny_amused
        extra = [*extra, f"model.name_or_path={save_tiny_amused(tmp_path / 'amused', hidden_size=32, seed=0)}"]
    args = [str(ROOT / "scripts" / script), "--config", str(ROOT / "configs" / config), "trainer.sharding=fsdp2",
            "trainer.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8", "trainer.save_every=2",
            "trainer.max_steps=3", *extra]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _launch_two([*args, f"output_dir={straight}"])
    step2 = straight / "checkpoints" / "step_000002"
    assert (step2 / "sharded" / ".metadata").exists()
    assert sorted(p.name for p in (step2 / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert yaml.safe_load((step2 / "run_state.yaml").read_text()) == {"step": 2, "sharding": "fsdp2", "world_size": 2}
    shutil.copytree(step2, resumed / "checkpoints" / step2.name)
    _launch_two([*args, f"output_dir={resumed}", "resume_from=latest"])
    a, b = _metrics(straight), _metrics(resumed)
    assert [r["run/world_size"] for r in a] == [2, 2, 2] and [r["step"] for r in b] == [3]
    assert all(r["optim/grad_norm"] > 0 for r in a), "every step should update the model"
    timing = {k for k in a[2] if k.startswith(("time/", "perf/"))}  # wall-clock figures
    assert {k: v for k, v in b[0].items() if k not in timing} == {k: v for k, v in a[2].items() if k not in timing}
    assert _saved_weights(resumed) == _saved_weights(straight)  # step 3's update: the optimizer state resumed too
    if recipe == "cogrpo":  # the token and schedule policies alternate; the trained schedule is saved
        assert [r["cogrpo/trains_schedule"] for r in a] == [0, 1, 0]
        saved = json.loads((step2 / "model" / "schedule_policy.json").read_text())
        assert saved["mean"] != pytest.approx([0.0, 0.0, math.log(2.0)], abs=1e-7)
    else:
        assert (step2 / "model" / "config.json").exists()
    if recipe == "text":
        _resume_in_one_process(args, straight)


def _resume_in_one_process(args: list[str], run_dir: Path) -> None:
    """The .distcp shards of a two-process run load into one process (torch.distributed.checkpoint
    reshards); resuming with the other sharding mode is refused with the fix."""
    one = subprocess.run([sys.executable, *args, f"output_dir={run_dir}", "trainer.max_steps=4", "resume_from=latest"],
                         env=_env(), cwd=ROOT, timeout=LIMIT_S, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    assert [(r["step"], r["run/world_size"]) for r in _metrics(run_dir)] == [(1, 2), (2, 2), (3, 2), (4, 1)]
    assert "resuming a 2-process checkpoint on 1 processes" in one.stderr
    refused = subprocess.run([sys.executable, *args, f"output_dir={run_dir}", "trainer.max_steps=5",
                              "resume_from=latest", "trainer.sharding=none"], env=_env(), cwd=ROOT, timeout=LIMIT_S,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "resume it with trainer.sharding=fsdp2" in refused.stderr


STATEFUL = ["spo", "bnpo", "gdpo", "vade", "vas", "knapsack", "dynamic_filter"]


@pytest.fixture(scope="module")
def stateful_runs(tmp_path_factory):
    """Every stateful method trained on two processes, one after the other in a single launch."""
    out = tmp_path_factory.mktemp("stateful")
    _launch_two([str(ROOT / "tests" / "distributed" / "state_sync.py"), str(out), ",".join(STATEFUL)])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", STATEFUL)
def test_stateful_methods_stay_identical_on_every_rank(stateful_runs, method):
    r0, r1 = (torch.load(stateful_runs / method / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert len(r0["advantages"]) == 3
    for a, b in zip(r0["advantages"], r1["advantages"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # batch-level statistics over both ranks' rows
    assert _flatten(r0["state"]) == _flatten(r1["state"])
    assert _flatten(r0["state"]), "the state should not be empty"


def _flatten(value, prefix=""):
    """Nested state as a sorted list of (path, python value) pairs (tensors as lists)."""
    if isinstance(value, dict):
        return sorted(item for k, v in value.items() for item in _flatten(v, f"{prefix}/{k}"))
    if isinstance(value, torch.Tensor):
        return [(prefix, repr(value.tolist()))]
    if isinstance(value, (list, tuple)):
        return [(prefix, repr(value))]
    return [(prefix, repr(value))]


@pytest.mark.slow
def test_eval_script_splits_problems_over_two_processes(tmp_path):
    args = [str(ROOT / "scripts" / "eval.py"), "--config", str(ROOT / "configs" / "eval_math.yaml"),
            "model.name_or_path=tiny", "model.dtype=float32", "model.attn_implementation=null",
            f"output_dir={tmp_path}", "eval.benchmarks=[{name: gsm8k, limit: 5}]", "eval.num_samples=2",
            "eval.ks=[1,2]", "eval.temperature=1.0", "eval.max_new_tokens=6"]
    _launch_two(args)
    shards = {p.name.rsplit(".", 2)[1]: p.read_text().splitlines() for p in (tmp_path / "eval_cache").glob("*.jsonl")}
    rows = {rank: sorted({json.loads(line)["row"] for line in lines}) for rank, lines in shards.items()}
    assert rows == {"rank0": [0, 2, 4], "rank1": [1, 3]}
    two = json.loads((tmp_path / "eval.json").read_text())
    assert two["benchmarks"]["gsm8k"]["problems"] == 5
    # one process reads both shards and generates nothing
    subprocess.run([sys.executable, *args], check=True, env=_env(), cwd=ROOT, timeout=LIMIT_S, capture_output=True)
    assert len((tmp_path / "eval_cache").glob("*.rank0.jsonl").__next__().read_text().splitlines()) == 6
    assert json.loads((tmp_path / "eval.json").read_text())["benchmarks"] == two["benchmarks"]


@pytest.mark.slow
def test_vlm_parameters_stay_identical_across_ranks(tmp_path):
    from mmrl.models.tiny import build_tokenizer
    from mmrl.vlm.tiny import build_tiny_vlm

    script = str(ROOT / "tests" / "distributed" / "vlm_sync.py")
    run = subprocess.run([*TWO_PROCS, script, str(tmp_path)], env=_env(), cwd=ROOT, timeout=LIMIT_S, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    init = build_tiny_vlm(build_tokenizer(), seed=0).state_dict()
    for name, value in r0.items():
        torch.testing.assert_close(r1[name], value, rtol=0, atol=0, msg=name)
    moved = [k for k in r0 if "visual" in k and not torch.equal(init[k], r0[k])]
    assert moved, "the vision tower should have been updated"
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert max(s["advantage/abs_mean"] for s in steps) > 0  # RL steps with a gradient, not only the warm-up


@pytest.mark.slow
def test_video_reggrpo_with_augmentation_on_two_processes(tmp_path):
    """Each rank augments its own groups (hint draws, regenerated groups: different counts per rank)
    against a replay buffer both ranks fill with the same gathered group means. Under FSDP2: the
    sharded video model may generate a different number of times on each rank (its parameters are
    gathered for the rollout, so generation needs no collective)."""
    cmd = [*TWO_PROCS, str(ROOT / "scripts" / "train_video.py"), "--config",
           str(ROOT / "configs" / "tiny_video_reggrpo.yaml"), f"output_dir={tmp_path}", "trainer.max_steps=4",
           "trainer.sharding=fsdp2",
           "trainer.prompts_per_step=4", "rollout.group_size=4", "trainer.save_every=2", "augmentation.window=8",
           "data.synthetic.num_examples=16", "trainer.gradient_accumulation_steps=2"]
    run = subprocess.run(cmd, env=_env(), cwd=ROOT, timeout=LIMIT_S, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["run/world_size"] for l in lines] == [2] * 4 and all(math.isfinite(l["optim/grad_norm"]) for l in lines)
    assert sum(l["augment/hinted_groups"] + l["augment/noised_groups"] for l in lines) > 0
