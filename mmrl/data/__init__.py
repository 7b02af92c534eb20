"""Prompt datasets: jsonl files (the user's, or ones shipped in mmrl/data/files) and synthetic tasks.

A `.txt` source holds one prompt a line, each read into `data.prompt_field`.
Every loaded row is a dict with `prompt` (chat messages), `answer` and `solution` (both strings,
possibly empty) plus the row's original fields; a row read from a file also holds `_where`
('path:line', 1-based), which every error about the row names.
"""
from __future__ import annotations

import json
from pathlib import Path

from mmrl.data import synthetic

PACKAGE_FILES = Path(__file__).parent / "files"


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a jsonl file, each a JSON object, with its location in `_where` ('path:line')."""
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: a row must be a JSON object ({{\"question\": ..., \"answer\": ...}}), "
                                 f"got {type(row).__name__} {line.strip()[:60]}")
            rows.append({**row, "_where": f"{path}:{lineno}"})
    return rows


def row_label(row: dict, index: int) -> str:
    """Where a row comes from, for errors: 'path:line' of a file's row, else its 1-based position."""
    return row.get("_where") or f"row {index + 1}"


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
        raise ValueError(f"{row_label(row, index)}: no field '{data_cfg.prompt_field}' (data.prompt_field); "
                         f"fields: {sorted(k for k in row if k != '_where')}")
    try:
        user = data_cfg.prompt_template.format(**row)
    except KeyError as e:
        raise ValueError(f"{row_label(row, index)}: data.prompt_template refers to field {e}, which the row "
                         "lacks") from None
    messages = ([{"role": "system", "content": data_cfg.system_prompt}] if data_cfg.system_prompt else [])
    messages.append({"role": "user", "content": user})
    missing = {} if data_cfg.answer_field in row else {"_no_answer": True}  # checked against the rewards
    return {**row, "prompt": messages, "answer": str(row.get(data_cfg.answer_field, "")),
            "solution": str(row.get(data_cfg.solution_field, "")), **missing}


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
