"""Image prompts: jsonl rows with `images` (local paths) and a question, or the synthetic shapes task.

A row's images are opened and checked when the data is loaded: a missing or unreadable image drops
that row (counted, reported as `data/skipped`) and the run continues. URLs are refused: nothing is
downloaded at run time. Relative paths are resolved against the jsonl file's directory (or
`data.image_root`). Optional `options` become lettered choices after the question.
"""
from __future__ import annotations

import logging
from pathlib import Path

from mmrl.data import read_jsonl, resolve_source, row_label, to_example
from mmrl.data import synthetic
from mmrl.vlm.qai import LETTERS, invert_some

log = logging.getLogger(__name__)


def format_options(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def image_list(row: dict, field: str, index: int) -> list:
    value = row.get(field, row.get("image", []))  # `image` (one path) is accepted too
    images = value if isinstance(value, list) else [value]
    for im in images:
        if isinstance(im, str) and im.startswith(("http://", "https://")):
            raise ValueError(f"{row_label(row, index)}: image '{im}' is a URL; mmrl does not download at run time. "
                             f"Download it and put the local path in the '{field}' field")
    return images


def resolve_images(images: list, base: Path, where: str = "a row") -> list | None:
    """Absolute paths of readable images (PIL images pass through); None if any is missing or corrupt.
    Each image is decoded in full (PIL's verify() reads only a JPEG's headers, so a truncated file
    would pass it and fail later, mid-rollout)."""
    from PIL import Image

    out = []
    for im in images:
        if not isinstance(im, str):
            out.append(im)
            continue
        path = Path(im[7:] if im.startswith("file://") else im)
        path = path if path.is_absolute() else base / path
        try:
            with Image.open(path) as opened:
                opened.verify()
            with Image.open(path) as opened:  # verify() leaves the image unusable: reopen to decode it
                opened.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            log.warning("skipping %s: image %s unreadable (%s)", where, path, err)
            return None
        out.append(str(path))
    return out


def to_vision_prompt(example: dict, entries: list[dict]) -> dict:
    """Turn the user turn into Qwen-VL content: the image / video entries, then the text."""
    messages = []
    for m in example["prompt"]:
        if m["role"] == "user":
            m = {"role": "user", "content": list(entries) + [{"type": "text", "text": m["content"]}]}
        messages.append(m)
    return {**example, "prompt": messages}


def load_image_examples(data_cfg) -> tuple[list[dict], int]:
    """(examples, number of rows skipped for a missing or corrupt image) of `data_cfg.source`."""
    if data_cfg.source == "synthetic":
        s = data_cfg.synthetic
        extra = {"multiple_choice": True} if s.multiple_choice else {}
        rows, base = synthetic.generate(s.task, s.num_examples, s.max_operand, s.seed, **extra), Path.cwd()
    else:
        path = resolve_source(data_cfg.source)
        rows, base = read_jsonl(path), path.parent
    return image_examples(rows, data_cfg, base)


def image_examples(rows: list[dict], data_cfg, base: Path) -> tuple[list[dict], int]:
    """Rows already read -> (examples with image prompts, rows skipped for their images); relative
    image paths resolve against `base` unless data.image_root is set."""
    base = Path(data_cfg.image_root) if data_cfg.image_root else base

    def entries(row: dict, index: int) -> list[dict] | None:
        images = resolve_images(image_list(row, data_cfg.image_field, index), base, row_label(row, index))
        return None if images is None else [{"type": "image", "image": im} for im in images]

    return vision_examples(rows, data_cfg, entries, "image")


def vision_examples(rows: list[dict], data_cfg, entries, kind: str) -> tuple[list[dict], int]:
    """(examples, rows skipped) of rows whose media `entries(row, index)` gives as content entries
    (None: unreadable, the row is skipped and counted); options are lettered after the question and
    TW-GRPO's question-answer inversion applied first when data.qa_inversion > 0."""
    if data_cfg.qa_inversion > 0:
        rows = invert_some(rows, data_cfg.qa_inversion, data_cfg.synthetic.seed, prompt_field=data_cfg.prompt_field,
                           answer_field=data_cfg.answer_field, options_field=data_cfg.options_field)
    examples, skipped = [], 0
    for i, row in enumerate(rows):
        content = entries(row, i)
        if content is None:
            skipped += 1
            continue
        options = row.get(data_cfg.options_field) or []
        if options:
            row = {**row, data_cfg.prompt_field: f"{row[data_cfg.prompt_field]}\n{format_options(options)}"}
        examples.append(to_vision_prompt(to_example(row, data_cfg, i), content))
    if not examples:
        raise ValueError(f"data.source '{data_cfg.source}': no usable rows ({skipped} skipped for their {kind}s)")
    if skipped:
        log.warning("data: skipped %d of %d rows with a missing or unreadable %s", skipped, len(rows), kind)
    return examples, skipped
