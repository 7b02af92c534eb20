"""Evaluation benchmarks: the math and vision test sets shipped in mmrl/data/files, and any jsonl file.

    eval:
      benchmarks:
        - {name: gsm8k}                      # shipped (GSM8K test, 1319 rows)
        - {name: aime24, num_samples: 16, ks: [1, 16]}
        - {name: mine, source: /data/my_test.jsonl, prompt_field: problem, answer_field: solution}
        - {name: mathvision, num_samples: 4, ks: [1, 4]}   # images: model.modality vlm

Sources and licences of the shipped files: mmrl/data/files/README.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mmrl.config import DataConfig
from mmrl.data import read_jsonl, resolve_source, row_label, to_example
from mmrl.rewards import REWARDS

SHIPPED = {
    "gsm8k": {"source": "package:gsm8k_test"},
    "math500": {"source": "package:math500_test"},
    "aime24": {"source": "package:aime24"},
    "aime25": {"source": "package:aime25"},
    "amc23": {"source": "package:amc23"},
    # images (model.modality: vlm); multiple-choice rows list their options after the question
    "mathvision": {"source": "package:mathvision_testmini", "images": True, "reward": "accuracy_task"},
    "superclevr": {"source": "package:superclevr_sample", "images": True, "reward": "accuracy_task"},
}
DEFAULTS = {"prompt_field": "question", "answer_field": "answer", "prompt_template": "{question}",
            "reward": "accuracy_math", "images": False}


@dataclass
class Benchmark:
    name: str
    source: str
    examples: list[dict]  # as training examples: chat `prompt`, `answer`, the row's fields
    reward: str
    reward_params: dict
    num_samples: int
    ks: list[int]
    images: bool = False  # prompts carry images: needs an adapter that takes them (vlm)


def resolve(bench_cfg, eval_cfg, system_prompt: str | None, image_examples=None) -> Benchmark:
    """Fill `bench_cfg`'s unset fields (shipped benchmark, then defaults), load and check its rows."""
    where = f"eval.benchmarks[{bench_cfg.name}]"
    spec = {**DEFAULTS, **SHIPPED.get(bench_cfg.name, {})}
    spec.update({k: v for k, v in dataclasses.asdict(bench_cfg).items() if v is not None})
    if "source" not in spec:
        raise ValueError(f"{where}: '{bench_cfg.name}' is not a shipped benchmark ({sorted(SHIPPED)}); "
                         "set its `source` to a jsonl file")
    REWARDS.get(spec["reward"])
    n = spec.get("num_samples", eval_cfg.num_samples)
    ks = sorted(set(spec.get("ks", eval_cfg.ks)))
    if n < 1 or not ks or ks[0] < 1 or ks[-1] > n:
        raise ValueError(f"{where}: every k in ks={ks} must satisfy 1 <= k <= num_samples={n}")
    if n > 1 and eval_cfg.temperature == 0:
        raise ValueError(f"{where}: num_samples={n} with eval.temperature=0 (greedy) gives identical "
                         "samples; set eval.temperature > 0 (e.g. 0.6) or num_samples: 1")
    data_cfg = DataConfig(source=spec["source"], prompt_field=spec["prompt_field"],
                          answer_field=spec["answer_field"], prompt_template=spec["prompt_template"],
                          system_prompt=system_prompt)
    path = resolve_source(spec["source"])
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{where}: {spec['source']} has no rows")
    for i, row in enumerate(rows):
        if spec["answer_field"] not in row:
            raise ValueError(f"{where}: {row_label(row, i)}: no answer field '{spec['answer_field']}' "
                             f"(set answer_field); fields: {sorted(k for k in row if k != '_where')}")
    if spec["images"]:
        if image_examples is None:
            raise ValueError(f"{where}: the benchmark has images: evaluate it with a vision-language model "
                             "(model.modality: vlm)")
        examples, _ = image_examples(rows, data_cfg, path.parent)  # images checked; unreadable rows skipped
    else:
        examples = [to_example(r, data_cfg, i) for i, r in enumerate(rows)]
    if bench_cfg.limit > 0:
        examples = examples[:bench_cfg.limit]
    return Benchmark(name=bench_cfg.name, source=spec["source"], examples=examples, reward=spec["reward"],
                     reward_params=dict(spec["reward_params"]), num_samples=n, ks=ks, images=spec["images"])


def load_benchmarks(eval_cfg, system_prompt: str | None, image_examples=None) -> list[Benchmark]:
    """The configured benchmarks, checked. `image_examples(rows, data_cfg, base)` -> (examples, skipped)
    turns rows with images into prompts (a vision-language adapter's; without it a benchmark with
    images is refused)."""
    if not eval_cfg.benchmarks:
        raise ValueError(f"eval.benchmarks is empty; list some, e.g. [{{name: gsm8k}}]. Shipped: {sorted(SHIPPED)}")
    names = [b.name for b in eval_cfg.benchmarks]
    if len(set(names)) != len(names):
        raise ValueError(f"eval.benchmarks: names must be unique, got {names}")
    return [resolve(b, eval_cfg, system_prompt, image_examples) for b in eval_cfg.benchmarks]
