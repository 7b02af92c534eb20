"""A tiny name -> function registry shared by advantages, losses, rewards, samplers and estimators (the
package root: every layer may use it)."""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Callable


def import_callable(path: str, kind: str) -> Callable:
    """The callable `path` names as 'package.module:attribute' (the module importable from sys.path,
    e.g. the working directory or an installed package)."""
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:  # a launched script's sys.path starts at scripts/, not where it was run
        sys.path.append(os.getcwd())
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise KeyError(f"{kind} '{path}': cannot import it ({type(err).__name__}: {err}); give "
                       "'package.module:function' with the module on the Python path (run from its directory "
                       "or pip install it)") from None
    if not callable(fn):
        raise KeyError(f"{kind} '{path}' is a {type(fn).__name__}, not a function")
    return fn


class Registry(dict):
    """Functions by name. `flags` declares the properties a registered function may carry (name ->
    default; the default's type is the flag's type), set with `mark` and read with `flag`."""

    def __init__(self, kind: str, flags: dict | None = None):
        super().__init__()
        self.kind = kind
        self.flags = dict(flags or {})

    def mark(self, fn: Callable, **flags) -> Callable:
        """Set declared flags on `fn` (a flag that is not declared, or of another type, is an error)."""
        for key, value in flags.items():
            if key not in self.flags:
                raise KeyError(f"{self.kind} flag '{key}' is not declared; declared: {sorted(self.flags)}")
            default = self.flags[key]
            if default is not None and not isinstance(value, type(default)):
                raise TypeError(f"{self.kind} flag '{key}' takes a {type(default).__name__}, got {value!r}")
            setattr(fn, key, value)
        return fn

    def flag(self, name: str, key: str):
        """Flag `key` of the function registered as `name` (its declared default when not marked)."""
        if key not in self.flags:
            raise KeyError(f"{self.kind} flag '{key}' is not declared; declared: {sorted(self.flags)}")
        return getattr(self.get(name), key, self.flags[key])

    def register(self, name: str) -> Callable:
        def wrap(fn: Callable) -> Callable:
            if name in self:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self[name] = fn
            return fn
        return wrap

    def get(self, name: str) -> Callable:  # type: ignore[override]
        """The function registered as `name`, or, for 'package.module:function', that function imported."""
        if name not in self and ":" in name:
            return import_callable(name, self.kind)
        if name not in self:
            raise KeyError(f"unknown {self.kind} '{name}'; valid: {sorted(self)}, or an importable "
                           "'package.module:function'")
        return self[name]

    def check_params(self, name: str, params: dict, where: str, skip: tuple[str, ...] = ()) -> None:
        """Fail early (at config time) on a parameter the function does not take (or that the
        trainer supplies itself: `skip`)."""
        sig = inspect.signature(self.get(name))
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return
        # what a config may set: the keyword parameters with a default that the trainer does not supply
        # (a loss's logp / mask / advantages, a reward's completions, are the call's own arguments)
        accepted = [arg for arg, p in sig.parameters.items() if arg not in skip and p.default is not p.empty]
        for key in params:
            if key in skip or (key in sig.parameters and key not in accepted):
                raise ValueError(f"{where}.{key}: set by the trainer, not in the config")
            if key not in sig.parameters:
                raise ValueError(f"{where}.{key}: {self.kind} '{name}' takes no parameter '{key}'; "
                                 f"valid: {accepted}")
