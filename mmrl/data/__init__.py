"""Prompt datasets: jsonl files (the user's, or ones shipped in mmrl/data/files) and synthetic tasks.

A `.txt` source holds one prompt a line, each read into `data.prompt_field`.
Every loaded row is a dict with `prompt` (chat messages), `answer` and `solution` (both strings,
possibly empty) plus the row's original fields.
"""
from __future__ import annotations

import json
from pathlib import Path

from mmrl.data import synthetic

PACKAGE_FILES = Path(__file__).parent / "files"


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return rows


def resolve_source(source: str) -> Path:
    if source.startswith("package:"):
        path = PACKAGE_FILES / f"{source.split(':', 1)[1]}.jsonl"
        if not path.exists():
            names = sorted(p.stem for p in PACKAGE_FILES.glob("*.jsonl"))
            raise ValueError(f"data.source: no shipped file '{source}'; shipped: {['package:' + n for n in names]}")
        return path
    path = Path(source)
    if not path.exists():
        raise ValueError(f"data.source: '{source}' does not exist (use a jsonl path, 'synthetic', or 'package:<name>')")
    return path


def to_example(row: dict, data_cfg, index: int) -> dict:
    """Attach chat messages, `answer` and `solution` to a raw row, as configured in `data_cfg`."""
    if data_cfg.prompt_field not in row:
        raise ValueError(f"row {index} has no field '{data_cfg.prompt_field}' (data.prompt_field); "
                         f"fields: {sorted(row)}")
    try:
        user = data_cfg.prompt_template.format(**row)
    except KeyError as e:
        raise ValueError(f"data.prompt_template refers to field {e} missing from row {index}") from None
    messages = ([{"role": "system", "content": data_cfg.system_prompt}] if data_cfg.system_prompt else [])
    messages.append({"role": "user", "content": user})
    return {**row, "prompt": messages, "answer": str(row.get(data_cfg.answer_field, "")),
            "solution": str(row.get(data_cfg.solution_field, ""))}


def load_examples(data_cfg) -> list[dict]:
    if data_cfg.source == "synthetic":
        s = data_cfg.synthetic
        rows = synthetic.generate(s.task, s.num_examples, s.max_operand, s.seed)
    elif data_cfg.source.endswith(".txt"):  # one prompt a line (e.g. image generation prompts)
        path = resolve_source(data_cfg.source)
        rows = [{data_cfg.prompt_field: line.strip()} for line in path.read_text().splitlines() if line.strip()]
    else:
        rows = read_jsonl(resolve_source(data_cfg.source))
    if not rows:
        raise ValueError(f"data.source '{data_cfg.source}' has no rows")
    return [to_example(r, data_cfg, i) for i, r in enumerate(rows)]
