import json

import pytest
import torch

from mmrl.config import BenchmarkConfig, EvalConfig, load_config
from mmrl.core.batch import RolloutBatch
from mmrl.eval import evaluate, load_benchmarks, markdown_table

# question -> its 4 samples, in sample order
SCRIPT = {
    "q0": ["<answer>12</answer>"] * 4,                                   # all right
    "q1": ["<answer>7</answer>", "<answer>0.5</answer>", "<answer>1/2</answer>", "<answer>3</answer>"],
    "q2": ["<answer>8</answer>", "<answer>8</answer>", "no answer here", "<answer>9</answer>"],
}
ANSWERS = {"q0": "12", "q1": "7", "q2": "5"}


class ScriptedAdapter:
    """generate() hands out each question's scripted samples in order; counts calls; can fail."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls, self.served, self.fail_on_call = 0, {}, fail_on_call

    def generate(self, model, examples, sizes, rollout_cfg):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        texts = []
        for e, k in zip(examples, sizes):
            start = self.served.get(e["question"], 0)
            texts += SCRIPT[e["question"]][start:start + k]
            self.served[e["question"]] = start + k
        n = len(texts)
        return RolloutBatch(prompt_ids=torch.zeros(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1),
                            completion_ids=torch.zeros(n, 3, dtype=torch.long),
                            completion_mask=torch.ones(n, 3), group_ids=torch.zeros(n), completions_text=texts)


@pytest.fixture
def bench_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in ANSWERS.items()))
    return path


def eval_cfg(bench_file, **kw):
    return EvalConfig(benchmarks=[BenchmarkConfig(name="mine", source=str(bench_file))], num_samples=4,
                      ks=[1, 2, 4], temperature=1.0, **kw)


def run(adapter, cfg, cache):
    return evaluate(adapter, None, load_benchmarks(cfg, None), cfg, cache, model_key="m")


def test_metrics_from_scripted_samples(bench_file, tmp_path):
    r = run(ScriptedAdapter(), eval_cfg(bench_file, batch_size=2), tmp_path / "cache").benchmarks["mine"]
    # correct per row: [1,1,1,1], [1,0,0,0], [0,0,0,0]
    assert r["problems"] == 3 and r["samples"] == 4
    assert r["pass@1"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert r["pass@2"] == pytest.approx((1 + (1 - 3 / 6) + 0) / 3)  # 1 - C(3,2)/C(4,2)
    assert r["pass@4"] == pytest.approx(2 / 3)
    assert r["mean@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    # maj@4: q1's 0.5 and 1/2 pool to 2 votes and beat the right 7; q2's 8 wins
    assert r["maj@4"] == pytest.approx(1 / 3)
    # maj@2: q1 ties 7 (right) against 0.5 (wrong) -> 0.5; q2 "8" wrong
    assert r["maj@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert r["no_answer"] == pytest.approx(1 / 12)


def test_interrupted_eval_resumes_from_cache(bench_file, tmp_path):
    cfg = eval_cfg(bench_file, batch_size=1)
    with pytest.raises(KeyboardInterrupt):
        run(ScriptedAdapter(fail_on_call=2), cfg, tmp_path / "cache")  # row 0 written, then interrupted
    cached = [json.loads(line) for f in (tmp_path / "cache").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert sorted({r["row"] for r in cached}) == [0]
    resumed = ScriptedAdapter()
    resumed.served["q0"] = 4  # the resumed process must not ask for q0 again
    result = run(resumed, cfg, tmp_path / "cache")
    assert resumed.calls == 2
    fresh = run(ScriptedAdapter(), cfg, tmp_path / "other")
    assert result.benchmarks == fresh.benchmarks
    again = ScriptedAdapter()
    assert run(again, cfg, tmp_path / "cache").benchmarks == fresh.benchmarks and again.calls == 0


def test_cache_skips_a_line_cut_by_a_crash_and_regenerates_it(bench_file, tmp_path):
    cfg = eval_cfg(bench_file, batch_size=3)
    run(ScriptedAdapter(), cfg, tmp_path / "cache")
    (shard,) = (tmp_path / "cache").glob("*.jsonl")
    lines = shard.read_text().splitlines()
    shard.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])  # last sample (q2, #3) half written
    adapter = ScriptedAdapter()
    adapter.served = {"q0": 4, "q1": 4, "q2": 3}
    r = run(adapter, cfg, tmp_path / "cache").benchmarks["mine"]
    assert adapter.calls == 1 and adapter.served["q2"] == 4
    assert r["pass@1"] == pytest.approx((1 + 0.25) / 3)


def test_cache_key_changes_with_sampling_settings(bench_file, tmp_path):
    run(ScriptedAdapter(), eval_cfg(bench_file), tmp_path / "cache")
    adapter = ScriptedAdapter()
    run(adapter, eval_cfg(bench_file, top_p=0.9), tmp_path / "cache")
    assert adapter.calls == 1 and len(list((tmp_path / "cache").glob("*.jsonl"))) == 2


def test_markdown_table_has_every_metric_and_the_average(bench_file, tmp_path):
    table = markdown_table(run(ScriptedAdapter(), eval_cfg(bench_file), tmp_path / "c"))
    head, _, row, avg = table.splitlines()
    assert head.split(" | ")[3:6] == ["pass@1", "maj@1", "mean@1"]
    assert row.startswith("| mine | 3 | 4 | 41.7 |") and avg.startswith("| **average** |")


@pytest.mark.parametrize("bench, kw, match", [
    ({"name": "nope"}, {}, "not a shipped benchmark"),
    ({"name": "gsm8k", "ks": [1, 8]}, {"num_samples": 4, "temperature": 1.0}, "1 <= k <= num_samples=4"),
    ({"name": "gsm8k"}, {"num_samples": 4, "ks": [1], "temperature": 0.0}, "greedy"),
    ({"name": "gsm8k", "reward": "nope"}, {}, "unknown reward function 'nope'"),
    ({"name": "gsm8k", "answer_field": "solutionx"}, {}, "no answer field 'solutionx'"),
])
def test_config_errors_name_the_field(bench, kw, match):
    cfg = load_config(None, [f"eval.benchmarks=[{json.dumps(bench)}]", *[f"eval.{k}={v}" for k, v in kw.items()]])
    with pytest.raises((ValueError, KeyError), match=match):
        load_benchmarks(cfg.eval, None)


def test_shipped_benchmarks_load_with_answers():
    cfg = load_config(None, ["eval.benchmarks=[{name: gsm8k}, {name: math500}, {name: aime24}, "
                             "{name: aime25}, {name: amc23}]"])
    sizes = {b.name: len(b.examples) for b in load_benchmarks(cfg.eval, "Box the answer.")}
    assert sizes == {"gsm8k": 1319, "math500": 500, "aime24": 30, "aime25": 30, "amc23": 40}
    b = load_benchmarks(cfg.eval, "Box the answer.")[2]
    assert b.examples[0]["prompt"][0] == {"role": "system", "content": "Box the answer."}
    assert b.examples[0]["answer"] == "204"
