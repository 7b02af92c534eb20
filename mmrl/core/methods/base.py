"""The one door through which a training method with state, or one that rewrites a rollout, plugs into
the loop (mmrl.core.trainer): SPO's adaptive forgetting, DeepVideo-R1's augmentation, LLDS, VAS's
re-scoring here; IGPO's inpainting and Co-GRPO's alternation in the dllm package.

A method is a subclass of `Method` registered by name in METHODS (`@METHODS.register("name")`). Each
run builds, in registration order, every registered method whose `active(loop)` is true, after the
model, optimizer, sampler and estimator state exist, and calls its hooks at fixed points of a step:

    step:  before_rollout -> rollout (generate, score) -> after_rollout -> old / reference log-probs
           -> advantage_context -> advantages -> [per inner update: before_iteration, loss_terms for
           each micro-batch] -> after_update -> log, save

Every hook has a default that does nothing, so a method overrides only the ones it needs. Hooks run on
every rank; a hook that gathers a model or communicates must be entered by every rank. Metrics a hook
returns are logged with the step: keys ending in `/errors` and those in `counted` are summed over the
ranks, the others averaged.

Configuration: `check(cfg)` (a classmethod) validates the method's settings in every run, active or
not, before anything is built. A method new to mmrl needs no schema change: `methods: {name: {...}}`
in a recipe turns it on (the default `active`) and its parameters are `settings(cfg)`. The
methods that predate the door keep their own config sections (augmentation, inpainting, ...) and say
in `active` which settings turn them on.

State: a method with `stateful = True` is checkpointed with the sampler (`state_dict` /
`load_state_dict`), under its name, and restored on resume.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from accelerate.utils import gather_object

from mmrl.registry import Registry


RESERVED = ("sampler", "advantage")  # keys of the checkpointed algorithm state besides the methods' names


class MethodRegistry(Registry):
    """Method classes by name; `register` also sets the class's `name`."""

    def register(self, name: str):
        def wrap(cls):
            if not (isinstance(cls, type) and issubclass(cls, Method)):
                raise TypeError(f"training method '{name}' must be a subclass of mmrl.core.methods.Method")
            if name in RESERVED:
                raise ValueError(f"training method name '{name}' is taken by the algorithm state's own entries")
            super(MethodRegistry, self).register(name)(cls)  # refuses a duplicate before the class is renamed
            cls.name = name
            return cls
        return wrap

    def resolve(self, key: str) -> type:
        """The class a `methods` key names: a registered name, or 'package.module:Class' imported (and
        registered under that path unless its module registered it on import)."""
        if key in self:
            return self[key]
        cls = self.get(key)  # imports 'package.module:Class' (an unknown plain name raises, listing the valid)
        own_name = getattr(cls, "name", None)
        if not (own_name in self and self[own_name] is cls):
            self.register(key)(cls)
        return cls


METHODS = MethodRegistry("training method")


@dataclass
class Loop:
    """What a method's hooks may read: the run's config and examples, the accelerator, the adapter, the
    training model (wrapped or sharded for the update; `mmrl.core.policy.unwrapped_for_generation`
    gives the plain module) and the algorithm state (`state.sampler`, `state.advantage`; None when
    `policy_update` is called on its own, outside a run)."""
    cfg: Any
    accelerator: Any
    adapter: Any
    model: Any
    examples: list = field(default_factory=list)
    state: Any = None


class Method:
    """Base of the training methods (see the module docstring for when each hook runs)."""
    name: str = ""  # set by METHODS.register
    stateful: bool = False  # checkpoint state_dict() with the sampler
    counted: tuple[str, ...] = ()  # metrics summed over ranks (counts), not averaged
    later_iteration_stats: tuple[str, ...] = ()  # loss statistics logged as the mean over inner updates 2..mu

    def __init__(self, loop: Loop):
        self.loop = loop

    @classmethod
    def check(cls, cfg) -> None:
        """Raise a ValueError naming the config key and the fix for settings this method cannot run."""

    @classmethod
    def settings(cls, cfg) -> dict | None:
        """This method's entry under `methods` (by its registered name or its import path), or None."""
        for key, params in cfg.methods.items():
            if METHODS.resolve(key) is cls:
                return dict(params or {})
        return None

    @classmethod
    def active(cls, loop: Loop) -> bool:
        """Whether this run uses the method (default: named under `methods` in the config)."""
        return cls.settings(loop.cfg) is not None

    @classmethod
    def label(cls, cfg) -> str | None:
        """The method's part of the run's name (progress bar, plots) when the config turns it on."""
        return None

    @property
    def params(self) -> dict:
        """This method's parameters from `methods.<name>` (empty for the methods with their own section)."""
        return type(self).settings(self.loop.cfg) or {}

    def before_rollout(self, step: int) -> dict:
        """Before the step's prompts are drawn (e.g. re-score every prompt); returns metrics."""
        return {}

    def after_rollout(self, batch, step: int):
        """This rank's scored batch, before the log-probs and advantages: returns (batch, metrics); it may
        replace rows (with groups of the same sizes) or set `batch.loss_mask` / `batch.ratio_mask`."""
        return batch, {}

    def advantage_context(self, batch) -> dict:
        """Extra keyword arguments of the advantage estimator for this step (every rank the same)."""
        return {}

    def before_iteration(self, chunks: list, iteration: int) -> None:
        """Before inner update `iteration` (0-based) over the micro-batches `chunks`."""

    def loss_terms(self, micro_batch, iteration: int) -> dict:
        """Extra keyword arguments of `losses.compute` for this micro-batch at this inner update."""
        return {}

    def after_update(self, batch) -> dict:
        """After the step's optimizer updates; returns metrics."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def merge_across_ranks(accelerator, local: dict) -> dict:
    """The union of every rank's dict (the same on all ranks)."""
    if accelerator.num_processes == 1:
        return dict(local)
    merged: dict = {}
    for part in gather_object([local]):
        merged.update(part)
    return merged


def check_methods(cfg) -> None:
    """Every name under `methods` known (a 'package.module:Class' name imported), then every registered
    method's config check. The config is not changed."""
    for key in cfg.methods:
        METHODS.resolve(key)
    for cls in list(METHODS.values()):
        cls.check(cfg)


def build_methods(loop: Loop) -> list[Method]:
    """The active methods of this run, in registration order."""
    return [cls(loop) for cls in METHODS.values() if cls.active(loop)]
