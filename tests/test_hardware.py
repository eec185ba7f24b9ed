"""Precision per machine: "auto" resolves to bf16 only where bf16 is native, and errors name the fix;
freed memory goes back to the system between stages."""

from __future__ import annotations

import sys

import pytest

from irpo import hardware
from irpo.card_loader import CardError, load_card


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim; elsewhere only gc runs")
def test_release_memory_gives_heap_freed_in_pieces_back_to_the_system():
    """What `irpo run` relies on between stages: memory freed in pieces (a model, optimiser state,
    activations) stays with the process, pinned by a few survivors, until release_memory."""
    import psutil

    process = psutil.Process()
    blocks = [bytearray(64 * 1024) for _ in range(12_000)]  # ~790 MB, each below glibc's mmap threshold
    survivors = blocks[::100]  # what a stage keeps: a few small objects between the freed ones
    del blocks
    held = process.memory_info().rss
    hardware.release_memory()
    assert process.memory_info().rss < held - 500e6, "freed heap was not given back"
    assert len(survivors) == 120
