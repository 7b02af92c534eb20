"""Rewards on generated images (the completions of model.modality: mdm are PIL images).

- `colour_layout`: a verifiable reward for prompts such as "red left, blue right" or "green top,
  yellow bottom": for each (colour, region) clause, the fraction of the region's pixels whose nearest
  PALETTE colour is the named one, averaged over clauses (a prompt with only a colour word scores
  the whole image). In [0, 1]; a uniformly random image scores about 1/8.
- `clip_score`: cosine similarity of the image and prompt embeddings of an open_clip model loaded
  from local files (`model`: an architecture name or a JSON config path; `pretrained`: a weights
  file). In [-1, 1]. Combine several through `rewards:` and the core's multi-reward estimators.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import torch

from dllm.image.adapter import prompt_text
from dllm.image.models import PALETTE
from mmrl.rewards.registry import REWARDS

_COLOURS = list(PALETTE)
_CLAUSE = re.compile(rf"\b({'|'.join(_COLOURS)})\b(?:\s+(left|right|top|bottom))?")


def layout_clauses(prompt: str) -> list[tuple[str, str | None]]:
    """[(colour, region or None)] named in a prompt, in order."""
    return [(m.group(1), m.group(2)) for m in _CLAUSE.finditer(prompt.lower())]


def region_mask(region: str | None, height: int, width: int) -> np.ndarray:
    rows, cols = np.mgrid[:height, :width]
    return {None: np.ones((height, width), bool), "left": cols < width // 2, "right": cols >= width // 2,
            "top": rows < height // 2, "bottom": rows >= height // 2}[region]


def nearest_colour(image) -> np.ndarray:
    """[H, W] index into PALETTE of each pixel's nearest colour."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    palette = np.asarray(list(PALETTE.values()), dtype=np.float32)
    return ((pixels[:, :, None, :] - palette[None, None]) ** 2).sum(-1).argmin(-1)


@REWARDS.register("colour_layout")
def colour_layout(completions, examples, **kwargs) -> list[float]:
    scores = []
    for image, example in zip(completions, examples):
        clauses = layout_clauses(prompt_text(example))
        if not clauses:
            raise ValueError(f"colour_layout: no colour of {_COLOURS} in prompt {prompt_text(example)!r}")
        nearest = nearest_colour(image)
        h, w = nearest.shape
        scores.append(float(np.mean([(nearest[region_mask(region, h, w)] == _COLOURS.index(colour)).mean()
                                     for colour, region in clauses])))
    return scores


@functools.lru_cache(maxsize=2)
def load_open_clip(model: str, pretrained: str):
    """(model, preprocess, tokenizer) of an open_clip model from local files only."""
    import open_clip

    if not Path(pretrained).is_file():
        raise ValueError(f"clip_score: pretrained '{pretrained}' is not a local weights file (mmrl does not download)")
    name = model
    if model.endswith(".json"):
        if not Path(model).is_file():
            raise ValueError(f"clip_score: model config '{model}' does not exist")
        open_clip.add_model_config(model)
        name = Path(model).stem
    net, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
    return net.eval(), preprocess, open_clip.get_tokenizer(name)


@REWARDS.register("clip_score")
def clip_score(completions, examples, model: str = "ViT-B-32", pretrained: str = "", **kwargs) -> list[float]:
    net, preprocess, tokenizer = load_open_clip(model, pretrained)
    with torch.no_grad():
        images = torch.stack([preprocess(image) for image in completions])
        image_emb = net.encode_image(images, normalize=True)
        text_emb = net.encode_text(tokenizer([prompt_text(e) for e in examples]), normalize=True)
    return (image_emb * text_emb).sum(-1).tolist()
