"""Where a stage's wall time goes: named phases, summed in this process, kept in the stage's record.

    with timing.phase("sampling"):
        with timing.phase("engine start"):      # recorded as "sampling / engine start"
            ...
    timing.count("vllm starts")
    record.timings = timing.take()              # {"seconds": {...}, "counts": {...}, "peak_gb": {...}}; starts afresh

A phase opened inside another is recorded under it ("parent / child"), so a table can show what
part of a phase a child took. Each phase also gets its peak memory: the resident set of this
process and its children (vLLM's engine processes), summed, sampled every half second while it
is open and when it ends (Linux /proc; elsewhere none is recorded). Ray workers are not children
of the driver and are not counted. Each stage (build, train, eval) calls `take()` when it starts and
when it writes its record, so a record holds its own stage's phases only; the run summary reads
them back (irpo_run.summary), so the table of a resumed run shows where each stage's last run spent
its time.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SAMPLE_EVERY_S = 0.5

_seconds: dict[str, float] = defaultdict(float)
_counts: dict[str, int] = defaultdict(int)
_peak_kb: dict[str, int] = {}
_open: list[list] = []  # [name, full name, start] of the phases entered and not yet left, outermost first
_lock = threading.Lock()  # _open and _peak_kb are shared with the memory sampler
_sampler: threading.Thread | None = None


@contextmanager
def phase(name: str) -> Iterator[None]:
    entry = [name, " / ".join([*(e[0] for e in _open), name]), time.perf_counter()]
    with _lock:
        _open.append(entry)
    _seconds[entry[1]] += 0.0  # listed in the order phases start: a parent before its children
    _start_sampler()
    try:
        yield
    finally:
        _record_memory()  # a phase shorter than the sampling interval still gets its value
        with _lock:
            _open.pop()
        _seconds[entry[1]] += time.perf_counter() - entry[2]


def _start_sampler() -> None:
    global _sampler
    if _sampler is None or not _sampler.is_alive():  # once per process (a fork has no threads)
        _sampler = threading.Thread(target=_sample_forever, name="irpo-memory-sampler", daemon=True)
        _sampler.start()


def _sample_forever() -> None:
    while True:
        _record_memory()
        time.sleep(SAMPLE_EVERY_S)


def _record_memory() -> None:
    with _lock:
        names = [entry[1] for entry in _open]
    if not names:
        return
    kb = resident_kb()
    with _lock:
        for name in names:
            _peak_kb[name] = max(_peak_kb.get(name, 0), kb)


def resident_kb(pid: int | None = None) -> int:
    """Resident memory of `pid` (this process) and all its descendants, in kB; 0 without /proc."""
    total, todo = 0, [pid or os.getpid()]
    while todo:
        proc = Path("/proc") / str(todo.pop())
        try:
            status = (proc / "status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in (proc / "task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):  # gone meanwhile, a kernel thread, or no /proc
            continue
    return total


def count(name: str, n: int = 1) -> None:
    _counts[name] += n


def take() -> dict:
    """The phases' seconds (rounded to 0.1 s), the counts and each phase's peak memory (GB) since
    the last take; then starts afresh.

    A phase still open counts up to now (a record written inside its "save" phase includes it)."""
    now = time.perf_counter()
    for entry in _open:
        _seconds[entry[1]] += now - entry[2]
        entry[2] = now
    with _lock:
        peak = {k: round(v * 1024 / 1e9, 2) for k, v in _peak_kb.items() if v}
        _peak_kb.clear()
    taken = {"seconds": {k: round(v, 1) for k, v in _seconds.items()}, "counts": dict(_counts), "peak_gb": peak}
    _seconds.clear()
    _counts.clear()
    return taken
