"""A tiny name -> function registry shared by advantages, losses, rewards and aggregations."""
from __future__ import annotations

import inspect
from typing import Callable


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable:
        def wrap(fn: Callable) -> Callable:
            if name in self:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self[name] = fn
            return fn
        return wrap

    def get(self, name: str) -> Callable:  # type: ignore[override]
        if name not in self:
            raise KeyError(f"unknown {self.kind} '{name}'; valid: {sorted(self)}")
        return self[name]

    def check_params(self, name: str, params: dict, where: str, skip: tuple[str, ...] = ()) -> None:
        """Fail early (at config time) on a parameter the function does not take (or that the
        trainer supplies itself: `skip`)."""
        sig = inspect.signature(self.get(name))
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return
        accepted = [p for p in sig.parameters if p not in skip]
        for key in params:
            if key in skip:
                raise ValueError(f"{where}.{key}: set by the trainer, not in the config")
            if key not in sig.parameters:
                raise ValueError(f"{where}.{key}: {self.kind} '{name}' takes no parameter '{key}'; "
                                 f"valid: {accepted}")
