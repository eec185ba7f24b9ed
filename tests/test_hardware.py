"""Precision per machine: "auto" resolves to bf16 only where bf16 is native, and errors name the fix."""

from __future__ import annotations

import pytest

from irpo_data import hardware
from irpo_data.card import CardError, load_card


@pytest.mark.parametrize(
    "flags,expected",
    [({"avx2"}, "float32"), ({"avx2", "avx512f", "amx_bf16"}, "bfloat16"), ({"avx512_bf16"}, "bfloat16")],
)
def test_auto_dtype_is_bf16_only_on_cpus_with_native_bf16(monkeypatch, flags, expected):
    """The CPU's flags are what cannot vary here (one machine): they are set, the rule is real."""
    monkeypatch.setattr(hardware, "_cpu_info", lambda: ("a CPU", frozenset(flags)))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert hardware.resolve_dtype("auto") == expected
    assert hardware.resolve_bf16("auto") is (expected == "bfloat16")
    assert hardware.resolve_dtype("float16") == "float16" and hardware.resolve_bf16(True) is True


def test_this_machine_is_described_with_what_samples_depend_on():
    info = hardware.describe()
    assert info["device"] in ("cpu", "cuda") and info["threads"] >= 1 and info["torch"]
    assert info["cpu_bf16"] == ({"amx_bf16", "avx512_bf16"} & hardware._cpu_info()[1] != set())


def test_bad_precision_values_name_the_choices():
    with pytest.raises(CardError, match="train.bf16 must be true, false or auto, got 'maybe'"):
        load_card("demo", ["train.bf16=maybe"])
    with pytest.raises(CardError, match="sampling.dtype must be auto, bfloat16, float32 or float16"):
        load_card("demo", ["sampling.dtype=fp8"])
