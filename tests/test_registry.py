"""The registry's typed flags and the adapter's declared optional members."""
import pytest

from mmrl.core.adapter import ADAPTER_OPTIONS, adapter_option, iteration_kwargs
from mmrl.core.advantages import ADVANTAGES
from mmrl.core.losses import LOSSES
from mmrl.registry import Registry


def test_flags_are_declared_typed_and_default():
    reg = Registry("thing", flags={"fast": False, "state_class": None})

    @reg.register("a")
    def a():
        return 1
    reg.mark(a, fast=True, state_class=dict)
    reg.register("b")(lambda: 2)
    assert reg.flag("a", "fast") is True and reg.flag("a", "state_class") is dict
    assert reg.flag("b", "fast") is False and reg.flag("b", "state_class") is None
    with pytest.raises(KeyError, match="flag 'quick' is not declared; declared: \\['fast', 'state_class'\\]"):
        reg.mark(a, quick=True)
    with pytest.raises(TypeError, match="flag 'fast' takes a bool, got 'yes'"):
        reg.mark(a, fast="yes")
    with pytest.raises(KeyError, match="not declared"):
        reg.flag("a", "quick")


def test_the_library_marks_its_methods():
    assert ADVANTAGES.flag("spo", "single_stream") and not ADVANTAGES.flag("grpo", "single_stream")
    assert LOSSES.flag("gspo", "sequence_level") and LOSSES.flag("disco", "whole_groups")
    assert not LOSSES.flag("grpo", "sequence_level")


def test_adapter_options_default_where_an_adapter_does_not_set_them():
    class Bare:
        pass

    class Diffusion:
        fresh_masks = True
        logprob_chunk_rows = 2
    assert {name: adapter_option(Bare(), name) for name in ADAPTER_OPTIONS} == ADAPTER_OPTIONS
    assert adapter_option(Diffusion(), "logprob_chunk_rows") == 2
    assert iteration_kwargs(Diffusion(), 3) == {"iteration": 3} and iteration_kwargs(Bare(), 3) == {}
