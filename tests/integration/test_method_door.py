"""The one door for training methods (mmrl.core.methods): a method written outside the trainer, with
its own config, state and rollout rewrite, runs through its hooks in the documented order, resumes
exactly, and is refused with a named error when misconfigured."""
import json

import pytest
import torch

from mmrl.core.batch import group_starts, loss_mask
from mmrl.core.methods import METHODS, Method

from .helpers import run_text


@METHODS.register("test_first_visits")
class FirstVisits(Method):
    """Trains only on a prompt's first `max_visits` visits: later visits leave the loss mask. The visit
    counts are the method's checkpointed state (every rank sees every prompt: counted from the step's
    gathered example indices would be needed with several processes; one process here)."""
    stateful = True
    counted = ("visits/masked_rows",)

    def __init__(self, loop):
        super().__init__(loop)
        self.visits: dict[int, int] = {}

    @classmethod
    def check(cls, cfg) -> None:
        if (cls.settings(cfg) or {}).get("max_visits", 1) < 1:
            raise ValueError("methods.test_first_visits.max_visits must be >= 1")

    def after_rollout(self, batch, step: int):
        limit = self.params.get("max_visits", 1)
        keep = torch.ones(len(batch), dtype=torch.bool)
        starts = group_starts(batch.group_ids.cpu()).tolist() + [len(batch)]
        for a, b in zip(starts, starts[1:]):
            index = int(batch.example_index[a])
            self.visits[index] = self.visits.get(index, 0) + 1
            keep[a:b] = self.visits[index] <= limit
        batch.loss_mask = loss_mask(batch) * keep[:, None].to(batch.completion_mask)
        return batch, {"visits/masked_rows": float((~keep).sum()), "visits/prompts_seen": float(len(self.visits))}

    def state_dict(self) -> dict:
        return {"visits": dict(self.visits)}

    def load_state_dict(self, state: dict) -> None:
        self.visits = {int(k): v for k, v in state["visits"].items()}


CALLS: list = []


@METHODS.register("test_hook_order")
class HookOrder(Method):
    """Records each hook call."""

    def before_rollout(self, step):
        CALLS.append(("before_rollout", step))
        return {}

    def after_rollout(self, batch, step):
        CALLS.append(("after_rollout", step))
        return batch, {}

    def advantage_context(self, batch):
        CALLS.append(("advantage_context",))
        return {}

    def before_iteration(self, chunks, iteration):
        CALLS.append(("before_iteration", iteration, len(chunks)))

    def loss_terms(self, micro_batch, iteration):
        CALLS.append(("loss_terms", iteration))
        return {}

    def after_update(self, batch):
        CALLS.append(("after_update",))
        return {}


SMALL = ["data.synthetic.num_examples=6", "trainer.prompts_per_step=2"]  # 3 steps per pass: prompts come back


def test_a_new_method_runs_with_its_own_config_and_resumes_exactly(tmp_path):
    common = [*SMALL, "methods={test_first_visits: {max_visits: 1}}", "trainer.save_every=2", "trainer.max_steps=6"]
    straight, _ = run_text(tmp_path / "a", *common)
    masked = [r["visits/masked_rows"] for r in straight.history]
    assert masked[:3] == [0, 0, 0] and masked[3:] == [8, 8, 8]  # the second pass: every group (2 x 4 rows) masked
    assert [r["visits/prompts_seen"] for r in straight.history] == [2, 4, 6, 6, 6, 6]
    assert all(r["loss/total"] == 0 and r["optim/grad_norm"] == 0 for r in straight.history[3:])  # nothing left to train on
    run_text(tmp_path / "b", *common[:-1], "trainer.max_steps=3")
    resumed, _ = run_text(tmp_path / "b", *common, "resume_from=latest")
    # the visit counts came back from the step-3 checkpoint: steps 4.. mask as in the straight run
    assert [(r["step"], r["visits/masked_rows"]) for r in resumed.history if r["step"] > 3] == \
        [(4, 8), (5, 8), (6, 8)]
    for a, b in zip(straight.history[3:], resumed.history[3:]):
        assert (a["loss/total"], a["reward/mean"]) == (b["loss/total"], b["reward/mean"])
    lines = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [line["visits/masked_rows"] for line in lines] == masked


def test_a_method_off_leaves_the_run_unchanged(tmp_path):
    off, _ = run_text(tmp_path / "off", *SMALL, "trainer.max_steps=4")
    on, _ = run_text(tmp_path / "on", *SMALL, "trainer.max_steps=4", "methods={test_first_visits: {max_visits: 9}}")
    for a, b in zip(off.history, on.history):  # never masks with max_visits 9: the same run
        assert (a["loss/total"], a["reward/mean"], a["optim/grad_norm"]) == (b["loss/total"], b["reward/mean"], b["optim/grad_norm"])


def test_hooks_run_in_the_documented_order(tmp_path):
    CALLS.clear()
    run_text(tmp_path, *SMALL, "trainer.max_steps=2", "methods={test_hook_order: {}}", "algorithm.num_iterations=2",
             "trainer.gradient_accumulation_steps=2")
    step = [("after_rollout", 0), ("advantage_context",), ("before_iteration", 0, 2), ("loss_terms", 0),
            ("loss_terms", 0), ("before_iteration", 1, 2), ("loss_terms", 1), ("loss_terms", 1), ("after_update",)]
    assert CALLS == [("before_rollout", 0), *step, ("before_rollout", 1), ("after_rollout", 1), *step[1:]]


@pytest.mark.parametrize("methods, message", [
    ("{nope: {}}", r"unknown training method 'nope'; valid: \[.*'test_first_visits'"),
    ("{test_first_visits: {max_visits: 0}}", r"methods.test_first_visits.max_visits must be >= 1"),
])
def test_a_misconfigured_method_is_refused_before_training(tmp_path, methods, message):
    with pytest.raises((KeyError, ValueError), match=message):
        run_text(tmp_path, *SMALL, "trainer.max_steps=1", f"methods={methods}")
    assert not (tmp_path / "metrics.jsonl").exists()


PATH_MODULE = '''
from mmrl.core.methods import METHODS, Method

RAN = []


@METHODS.register("door_test_decorated")
class Decorated(Method):
    def after_update(self, batch):
        RAN.append(self.name)
        return {}


class Plain(Method):
    def after_update(self, batch):
        RAN.append(self.name)
        return {"plain/param": self.params["x"]}
'''


def test_methods_named_by_import_path_run_once_each(tmp_path, monkeypatch):
    (tmp_path / "door_test_module.py").write_text(PATH_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    log, _ = run_text(tmp_path / "run", *SMALL, "trainer.max_steps=2",
                      "methods={door_test_module:Decorated: {}, door_test_module:Plain: {x: 3.0}}")
    import door_test_module

    # the decorated class runs under its registered name, the plain one under its path; each once a step
    assert door_test_module.RAN == ["door_test_decorated", "door_test_module:Plain"] * 2
    assert [r["plain/param"] for r in log.history] == [3.0, 3.0]


def test_a_method_cannot_take_a_name_the_checkpointed_state_uses():
    with pytest.raises(ValueError, match="'advantage' is taken by the algorithm state"):
        @METHODS.register("advantage")
        class Shadow(Method):
            pass
    assert "advantage" not in METHODS


def test_a_refused_duplicate_leaves_the_class_name_alone():
    class Again(Method):
        pass
    with pytest.raises(ValueError, match="registered twice"):
        METHODS.register("test_hook_order")(Again)
    assert Again.name == "" and METHODS["test_hook_order"] is HookOrder


def test_checking_the_methods_leaves_the_config_as_written(tmp_path, monkeypatch):
    from mmrl.config import load_config
    from mmrl.core.methods import check_methods

    (tmp_path / "door_check_module.py").write_text(
        "from mmrl.core.methods import METHODS, Method\n\n\n"
        "@METHODS.register('door_check_named')\nclass Named(Method):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config(None, ["methods={door_check_module:Named: {k: 1}}"])
    check_methods(cfg)
    import door_check_module

    assert list(cfg.methods) == ["door_check_module:Named"]
    assert door_check_module.Named.settings(cfg) == {"k": 1}
