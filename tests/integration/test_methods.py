"""Every method recipe (configs/methods/*.yaml) trains, checkpoints and resumes exactly."""
import json
import math

import pytest
import torch

from mmrl.core import samplers

from .helpers import METHODS, run_text

# per-method overrides that keep the smoke runs small (the recipes' own settings stay otherwise)
# (a small prompt set so stateful samplers revisit prompts within the run)
SMALL = {"spo": ["rollout.group_size=1", "trainer.prompts_per_step=8", "data.synthetic.num_examples=8"],
         "knapsack": ["sampler.params.min_history=4", "sampler.params.max_n=8", "data.synthetic.num_examples=4"],
         "vade": ["data.synthetic.num_examples=8"]}


def _records(path):
    return [json.loads(l) for l in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", METHODS)
def test_method_recipe_trains_and_resumes_exactly(tmp_path, method):
    common = [*SMALL.get(method, []), "trainer.save_every=2", "trainer.max_steps=4"]
    straight, _ = run_text(tmp_path / "a", *common, method=method)
    run_text(tmp_path / "b", *common[:-1], "trainer.max_steps=2", method=method)
    resumed, _ = run_text(tmp_path / "c", *common, f"resume_from={tmp_path / 'b' / 'checkpoints' / 'step_000002'}",
                          method=method)
    a = {r["step"]: r for r in straight.history}
    c = {r["step"]: r for r in resumed.history}
    assert sorted(c) == [3, 4]
    for step in (3, 4):
        for key in ("loss/total", "reward/mean", "optim/grad_norm", "completion_length/mean", "group_size/mean"):
            assert c[step][key] == a[step][key], (method, step, key)
    assert all(torch.isfinite(torch.tensor(r["loss/total"])) for r in straight.history)


class FixedSizes(samplers.UniformSampler):
    """Test sampler: groups of 1, 3, 5 and 7 completions."""

    def group_sizes(self, indices, group_size):
        return [1 + 2 * (j % 4) for j in range(len(indices))]


def test_core_trains_groups_of_unequal_size(tmp_path):
    samplers.SAMPLERS["fixed_sizes"] = FixedSizes
    try:
        # accuracy is still 0 this early; a length reward makes the groups' rewards differ
        log, _ = run_text(tmp_path, "sampler.name=fixed_sizes", "trainer.max_steps=2",
                          "rewards=[{name: length_penalty, params: {max_length: 10, cache_length: 9}}]",
                          "trainer.gradient_accumulation_steps=3", "algorithm.num_iterations=2", "algorithm.beta=0.04")
    finally:
        del samplers.SAMPLERS["fixed_sizes"]
    for r in log.history:
        assert r["group_size/mean"] == 4 and r["group_size/max"] == 7 and math.isfinite(r["loss/total"])
    assert any(r["optim/grad_norm"] > 0 for r in log.history)


def test_dynamic_filter_keeps_only_informative_groups(tmp_path):
    log, _ = run_text(tmp_path, "trainer.max_steps=4", "sft.steps=60", "rollout.max_new_tokens=10",
                      "sampler.params.max_rounds=4",
                      method="dynamic_filter")
    for r in log.history:
        assert 1 <= r["filter/rounds"] <= 4
        if r["filter/shortfall_groups"] == 0:
            assert r["reward/frac_degenerate_groups"] == 0
        assert r["group_size/mean"] == 4
    assert any(r["filter/shortfall_groups"] == 0 and r["filter/rounds"] >= 1 for r in log.history)


def test_tw_grpo_attached_weights_train_with_the_same_loss_value(tmp_path):
    warm = ("trainer.max_steps=1", "sft.steps=60", "rollout.max_new_tokens=10")  # rewards differ within groups
    detached, _ = run_text(tmp_path / "d", *warm, method="tw_grpo")
    attached, _ = run_text(tmp_path / "a", *warm, method="tw_grpo",
                           *["algorithm.token_weighting_params={alpha: 1.7, detach: false}"])
    d, a = detached.history[0], attached.history[0]
    assert d["advantage/abs_mean"] > 0 and math.isfinite(a["optim/grad_norm"])
    assert a["loss/total"] == pytest.approx(d["loss/total"], abs=1e-6) and a["tw_grpo/weight_mean"] == pytest.approx(d["tw_grpo/weight_mean"])


def test_vas_periodic_rescoring_runs_before_step_zero_and_every_t_steps(tmp_path):
    params = "sampler.params={mix: 0.5, rescore_every: 2, rescore_group_size: 2, refresh_in_batch: false}"
    full, _ = run_text(tmp_path / "a", "trainer.max_steps=4", "trainer.save_every=2", params, method="vas")
    assert [r.get("vas/rescored_completions") for r in full.history] == [64, None, 64, None]  # 32 prompts x 2
    assert [r["vas/scored_fraction"] for r in full.history] == [1.0] * 4  # every prompt scored before step 0
    run_text(tmp_path / "b", "trainer.max_steps=2", "trainer.save_every=2", params, method="vas")
    resumed, _ = run_text(tmp_path / "b", "trainer.max_steps=4", "trainer.save_every=2", params,
                          "resume_from=latest", method="vas")
    keys = ("loss/total", "reward/mean", "vas/vps_mean")
    assert [[r[k] for k in keys] for r in resumed.history] == [[r[k] for k in keys] for r in full.history]
