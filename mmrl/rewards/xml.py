"""The <reasoning> / <answer> rewards of d1 (dllm-reasoning/d1 diffu-grpo/reward_func.py, after
willccbb's GRPO demo) and IGPO (facebookresearch/igpo utils/reward_func.py), for the masked
diffusion recipes that claim those papers' settings. Each returns the official values; the recipe
sets the weight of each to 1 (or moves the official scale into the weight where noted)."""
from __future__ import annotations

import re

from mmrl.rewards.format import format_reward
from mmrl.rewards.registry import REWARDS

STRICT_XML = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
SOFT_XML = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"


def xml_answer(text: str) -> str:
    """d1's `extract_xml_answer`: the text after the last <answer> and before the next </answer>, stripped."""
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


@REWARDS.register("accuracy_xml_exact")
def accuracy_xml_exact(completions, examples, completion_lengths=None, answer_key: str = "answer"):
    """d1's `correctness_reward_func`: 1.0 if `xml_answer` equals the gold answer string exactly (d1
    scores 2.0: give it weight 2)."""
    return [1.0 if xml_answer(c) == str(e[answer_key]) else 0.0 for c, e in zip(completions, examples)]


@REWARDS.register("answer_is_integer")
def answer_is_integer(completions, examples=None, completion_lengths=None):
    """d1's `int_reward_func`: 1.0 if `xml_answer` is made of digits only (d1 scores 0.5: weight 0.5)."""
    return [1.0 if xml_answer(c).isdigit() else 0.0 for c in completions]


@REWARDS.register("xmlcount_d1")
def xmlcount_d1(completions, examples=None, completion_lengths=None):
    """d1's `count_xml`: 0.125 for each of "<reasoning>\\n", "\\n</reasoning>\\n", "\\n<answer>\\n",
    "\\n</answer>" present exactly once, minus 0.001 per character after the answer (up to 0.5)."""
    out = []
    for text in completions:
        count = 0.0
        if text.count("<reasoning>\n") == 1:
            count += 0.125
        if text.count("\n</reasoning>\n") == 1:
            count += 0.125
        if text.count("\n<answer>\n") == 1:
            count += 0.125 - len(text.split("\n</answer>\n")[-1]) * 0.001
        if text.count("\n</answer>") == 1:
            count += 0.125 - (len(text.split("\n</answer>")[-1]) - 1) * 0.001
        out.append(count)
    return out


_BOXED = re.compile(r"\\boxed\{")


@REWARDS.register("xmlcount_igpo")
def xmlcount_igpo(completions, examples=None, completion_lengths=None):
    """IGPO's `count_xml`: 0.125 for each of "<reasoning>\\n", "</reasoning>", "<answer>\\n", "</answer>"
    present exactly once, plus 0.25 when the text has a \\boxed{ (up to 0.75)."""
    out = []
    for text in completions:
        count = sum(0.125 for tag in ("<reasoning>\n", "</reasoning>", "<answer>\n", "</answer>") if text.count(tag) == 1)
        out.append(count + (0.25 if _BOXED.search(text) else 0.0))
    return out


@REWARDS.register("format_strict_xml")
def format_strict_xml(completions, examples=None, completion_lengths=None):
    """d1's `strict_format_reward_func`: re.match of ^<reasoning>\\n.*?\\n</reasoning>\\n<answer>\\n.*?\\n</answer>\\n$
    on the raw text (d1 scores 0.5: weight 0.5)."""
    return format_reward(completions, pattern=STRICT_XML, mode="match", strip=False)


@REWARDS.register("format_soft_xml")
def format_soft_xml(completions, examples=None, completion_lengths=None):
    """d1's `soft_format_reward_func`: re.match of <reasoning>.*?</reasoning>\\s*<answer>.*?</answer> on the raw
    text, from its start (d1 scores 0.5: weight 0.5)."""
    return format_reward(completions, pattern=SOFT_XML, mode="match", strip=False)
