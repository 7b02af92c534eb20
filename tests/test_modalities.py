"""Model families by name (mmrl.modalities): the built-in ones, and one of your own named by its import
path, trained through the same entry point as the scripts (mmrl.launch.train_family)."""
import json
import sys
from pathlib import Path

import pytest

from mmrl.config import load_config
from mmrl.launch import train_family
from mmrl.modalities import BUILT_IN, family

ROOT = Path(__file__).parents[1]

MY_FAMILY = '''
"""A model family outside mmrl: the tiny causal LM, with prompts of its own and a config section."""
from dataclasses import dataclass

from mmrl import text


@dataclass
class QuestionConfig:
    opening: str = "What is"
    count: int = 4


config_sections = {"data.question": QuestionConfig}


def build(cfg, training=True):
    return text.build(cfg, training)


def training_examples(cfg, adapter):
    q = cfg.data.question
    rows = [{"prompt": [{"role": "user", "content": f"{q.opening} {a} + 1?"}], "answer": str(a + 1)}
            for a in range(q.count)]
    return rows, {"data/my_rows": float(len(rows)), "data/opening_words": float(len(q.opening.split()))}
'''


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_built_in_family_provides_what_the_scripts_call(name):
    module = family(name)
    assert callable(module.build) and callable(module.training_examples)


def test_an_unknown_family_is_named_with_the_choices():
    with pytest.raises(ValueError, match=r"model.modality: 'speech' is not a built-in model family \(text, vlm, "
                                         r"video, dllm, mdm\) or an importable module path"):
        family("speech")


def test_a_module_without_the_family_functions_is_refused():
    with pytest.raises(ValueError, match=r"'json' \(json\) lacks build, training_examples"):
        family("json")


def test_a_family_of_your_own_trains_by_its_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_family.py").write_text(MY_FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(ROOT / "configs" / "tiny_text_grpo.yaml",
                      ["model.modality=my_family", f"output_dir={tmp_path / 'run'}", "trainer.max_steps=2", "sft.steps=0",
                       "trainer.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4",
                       "data.question.opening=Please compute"])
    train_family(cfg)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["data/my_rows"] for line in lines] == [4.0, 4.0]
    assert [line["data/opening_words"] for line in lines] == [2.0, 2.0]  # its own section, set from the command line
    with pytest.raises(ValueError, match=r"unknown config key 'data.question'"):  # a run of another family has none
        load_config(None, ["data.question.count=3"])
    sys.modules.pop("my_family", None)
