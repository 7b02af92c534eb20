"""Difficulty-aware data augmentation — DeepVideo-R1 (Park, Na, Kim, Kim, "DeepVideo-R1: Video
Reinforcement Fine-Tuning via Difficulty-aware Regressive GRPO", NeurIPS 2025, arXiv 2506.07464, §3.3).

Difficulty of a prompt x from its G rollouts:  dR(x) = mean over a replay buffer B_W of the W most
recent prompts' group-mean rewards  -  (1/G) sum_j R(x, y_j)  (relative to the recent average, which
the paper's Table 6 finds better than an absolute reference).
- dR > 0 (harder than recent prompts): difficulty-decreasing. The question with its ground-truth
  answer appended is sampled `hint_samples` times; the highest-reward completion's reasoning (its
  <think> content, else its text before <answer>) is cut to a prefix and appended to the question
  as a hint. The prefix grows with dR.
- dR < 0 (easier): difficulty-increasing. Gaussian noise on every frame of the prompt's videos,
  its std growing with |dR| (adapters with `supports_frame_noise`; noise is off elsewhere).
The augmented prompt x~ is rolled out again (G completions) and those rollouts replace x's in the
step's batch: the update trains on responses to x~. The buffer holds the original group means.

The paper does not publish how |dR| maps to hint length or noise level; ours (configurable) are
linear and capped: hint fraction = min(hint_max, hint_scale * dR) of the reasoning's words, noise
std = min(noise_max, noise_scale * |dR|) of the pixel range. dR is in reward units (the weighted
sum of the configured rewards), so with 0/1 accuracy alone it lies in [-1, 1].
"""
from __future__ import annotations

import math
import re
from collections import deque

import torch
from accelerate.utils import gather_object

from mmrl.core.adapter import adapter_option
from mmrl.core.batch import RolloutBatch, group_starts
from mmrl.core.methods.base import METHODS, Method
from mmrl.core.policy import unwrapped_for_generation
from mmrl.rewards import score_batch

THINK = re.compile(r"<think>(.*?)(</think>|$)", re.DOTALL)


class DifficultyAugmentation:
    """The replay buffer of recent group-mean rewards and the difficulty -> augmentation maps."""

    def __init__(self, window: int = 100, min_gap: float = 0.0, hint_samples: int = 4, hint_scale: float = 1.0,
                 hint_max: float = 0.8, answer_template: str = "(The correct answer is {answer}.)",
                 hint_template: str = "Hint: {hint}", noise_scale: float = 0.3, noise_max: float = 0.3):
        if window < 1:
            raise ValueError(f"augmentation.window={window}: the replay buffer needs at least 1 prompt")
        if not 0 <= hint_max <= 1:
            raise ValueError(f"augmentation.hint_max={hint_max} must be in [0, 1] (a fraction of the reasoning)")
        for name, template, field in (("answer_template", answer_template, "{answer}"),
                                      ("hint_template", hint_template, "{hint}")):
            if field not in template:
                raise ValueError(f"augmentation.{name}={template!r} must contain {field}")
        self.window, self.min_gap, self.hint_samples = window, min_gap, hint_samples
        self.hint_scale, self.hint_max = hint_scale, hint_max
        self.answer_template, self.hint_template = answer_template, hint_template
        self.noise_scale, self.noise_max = noise_scale, noise_max
        self.buffer: deque[float] = deque(maxlen=window)

    @classmethod
    def from_config(cls, aug_cfg) -> "DifficultyAugmentation":
        return cls(window=aug_cfg.window, min_gap=aug_cfg.min_gap, hint_samples=aug_cfg.hint_samples,
                   hint_scale=aug_cfg.hint_scale, hint_max=aug_cfg.hint_max, answer_template=aug_cfg.answer_template,
                   hint_template=aug_cfg.hint_template, noise_scale=aug_cfg.noise_scale, noise_max=aug_cfg.noise_max)

    def difficulties(self, group_means: list[float]) -> list[float]:
        """dR of each group against the buffer as it is now (all 0 while the buffer is empty). A gap
        below 1e-6 is float rounding between the float32 group means and the buffer's average (e.g.
        -3e-8 for equal rewards), not a difficulty: it counts as 0, so min_gap 0 never re-rolls it."""
        if not self.buffer:
            return [0.0] * len(group_means)
        reference = sum(self.buffer) / len(self.buffer)
        return [0.0 if abs(reference - m) < 1e-6 else reference - m for m in group_means]

    def push(self, group_means: list[float]) -> None:
        self.buffer.extend(group_means)

    def hint_fraction(self, difficulty: float) -> float:
        return min(self.hint_max, self.hint_scale * difficulty) if difficulty > self.min_gap else 0.0

    def noise_sigma(self, difficulty: float) -> float:
        return min(self.noise_max, self.noise_scale * -difficulty) if difficulty < -self.min_gap else 0.0

    def state_dict(self) -> dict:
        return {"buffer": list(self.buffer)}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = deque(state["buffer"], maxlen=self.window)


def reasoning_of(completion: str) -> str:
    """The reasoning of a completion: its <think> content, else its text before <answer>."""
    match = THINK.search(completion)
    text = match.group(1) if match else completion.split("<answer>")[0]
    return " ".join(text.split())


def hint_prefix(reasoning: str, fraction: float) -> str:
    """The first ceil(fraction * words) words of `reasoning` ('' for fraction 0 or no words)."""
    words = reasoning.split()
    return " ".join(words[:math.ceil(fraction * len(words))]) if fraction > 0 else ""


def with_user_text(example: dict, suffix: str) -> dict:
    """A copy of `example` whose last user message ends with a new line and `suffix` (plain string
    content, or the text entry of Qwen-VL list content)."""
    messages = [dict(m) for m in example["prompt"]]
    for m in reversed(messages):
        if m["role"] != "user":
            continue
        if isinstance(m["content"], str):
            m["content"] = f"{m['content']}\n{suffix}"
        else:
            content = [dict(c) for c in m["content"]]
            text = next((c for c in reversed(content) if c.get("type") == "text"), None)
            if text is None:
                content.append({"type": "text", "text": suffix})
            else:
                text["text"] = f"{text['text']}\n{suffix}"
            m["content"] = content
        break
    return {**example, "prompt": messages}


def noise_seed(run_seed: int, step: int, example_index: int) -> int:
    return (run_seed * 1_000_003 + step * 10_007 + example_index) % (2 ** 31)


def augment(cfg, accelerator, adapter, model, batch: RolloutBatch, aug: DifficultyAugmentation, step: int):
    """Replace the rollouts of this rank's hard / easy groups by rollouts of their augmented prompts;
    returns (batch, metrics). Every rank pushes the same global group means into the buffer."""
    total = batch.total_reward().cpu()
    starts = group_starts(batch.group_ids.cpu()).tolist()
    bounds = list(zip(starts, starts[1:] + [len(batch)]))
    means = [total[a:b].mean().item() for a, b in bounds]
    everyone = [m for part in gather_object([means]) for m in part] if accelerator.num_processes > 1 else means
    deltas = aug.difficulties(means)
    aug.push(everyone)
    examples = [batch.examples[a] for a, _ in bounds]
    index = [int(batch.example_index[a]) for a, _ in bounds]
    noise_ok = adapter_option(adapter, "supports_frame_noise")
    hard = [g for g, d in enumerate(deltas) if aug.hint_fraction(d) > 0 and aug.hint_samples > 0]
    easy = [g for g, d in enumerate(deltas) if aug.noise_sigma(d) > 0] if noise_ok else []
    new: dict[int, dict] = {}
    with unwrapped_for_generation(accelerator, model) as policy:
        if hard:
            cond = [with_user_text(examples[g], aug.answer_template.format(answer=examples[g]["answer"])) for g in hard]
            probe = adapter.generate(policy, cond, aug.hint_samples, cfg.rollout)
            probe.examples = [examples[g] for g in hard for _ in range(aug.hint_samples)]  # graded as asked
            score_batch(cfg.rewards, probe)
            best = probe.total_reward().cpu().view(len(hard), aug.hint_samples).argmax(-1).tolist()
            for k, g in enumerate(hard):
                text = probe.completions_text[k * aug.hint_samples + best[k]]
                hint = hint_prefix(reasoning_of(text), aug.hint_fraction(deltas[g]))
                if hint:
                    new[g] = with_user_text(examples[g], aug.hint_template.format(hint=hint))
        for g in easy:
            new[g] = {**examples[g], "video_noise": {"sigma": aug.noise_sigma(deltas[g]),
                                                     "seed": noise_seed(cfg.trainer.seed, step, index[g])}}
        order = sorted(new)
        if order:
            sizes = [bounds[g][1] - bounds[g][0] for g in order]
            redo = adapter.generate(policy, [new[g] for g in order], sizes, cfg.rollout)
    stats = {"augment/hinted_groups": sum(1 for g in new if g in hard),
             "augment/noised_groups": sum(1 for g in new if g in easy),
             "augment/difficulty_mean": sum(deltas) / max(len(deltas), 1)}
    for j, name in enumerate(batch.reward_names):  # the unaugmented prompts' rewards: the learning curve
        stats[f"augment/original/{name}/mean"] = batch.rewards[:, j].mean().item()
    if not order:
        return batch, stats
    stats.update(score_batch(cfg.rewards, redo))  # reward/<name>/errors
    redo.example_index = torch.tensor([index[g] for g in order]).repeat_interleave(torch.tensor(sizes))
    redo = redo.to(batch.group_ids.device)
    redo_starts = group_starts(redo.group_ids.cpu()).tolist() + [len(redo)]
    pieces = []
    for g, (a, b) in enumerate(bounds):
        if g in new:
            k = order.index(g)
            pieces.append(redo.select(slice(redo_starts[k], redo_starts[k + 1])))
        else:
            pieces.append(batch.select(slice(a, b)))
    return RolloutBatch.concat(pieces), stats


@METHODS.register("augmentation")
class DifficultyAwareAugmentation(Method):
    """`augmentation.name: difficulty`: each rank's scored groups are augmented after the rollout; the
    replay buffer of recent group means is the checkpointed state."""
    stateful = True
    counted = ("augment/hinted_groups", "augment/noised_groups")

    def __init__(self, loop):
        super().__init__(loop)
        self.augmentation = DifficultyAugmentation.from_config(loop.cfg.augmentation)
        if self.augmentation.noise_scale > 0 and not adapter_option(loop.adapter, "supports_frame_noise"):
            raise ValueError(f"augmentation.noise_scale={self.augmentation.noise_scale}: frame noise needs video "
                             f"inputs ({type(loop.adapter).__name__} has none); set augmentation.noise_scale: 0 "
                             "for hints only")

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.augmentation.name not in (None, "difficulty"):
            raise ValueError(f"augmentation.name: '{cfg.augmentation.name}' is not one of difficulty, null (off)")

    @classmethod
    def active(cls, loop) -> bool:
        return loop.cfg.augmentation.name == "difficulty"

    @classmethod
    def label(cls, cfg) -> str | None:
        return f"{cfg.augmentation.name}-aug" if cfg.augmentation.name else None

    def after_rollout(self, batch, step: int):
        loop = self.loop
        return augment(loop.cfg, loop.accelerator, loop.adapter, loop.model, batch, self.augmentation, step)

    def state_dict(self) -> dict:
        return self.augmentation.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.augmentation.load_state_dict(state)
