"""Where a stage's wall time goes: named phases, summed in this process, kept in the stage's record.

    with timing.phase("sampling"):
        with timing.phase("engine start"):      # recorded as "sampling / engine start"
            ...
    timing.count("vllm starts")
    record.timings = timing.take()              # {"seconds": {...}, "counts": {...}}; starts afresh

A phase opened inside another is recorded under it ("parent / child"), so a table can show what
part of a phase a child took. Each stage (build, train, eval) calls `take()` when it starts and
when it writes its record, so a record holds its own stage's phases only; the run summary reads
them back (irpo.summary), so the table of a resumed run shows where each stage's last run spent
its time.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

_seconds: dict[str, float] = defaultdict(float)
_counts: dict[str, int] = defaultdict(int)
_open: list[list] = []  # [name, full name, start] of the phases entered and not yet left, outermost first


@contextmanager
def phase(name: str) -> Iterator[None]:
    entry = [name, " / ".join([*(e[0] for e in _open), name]), time.perf_counter()]
    _open.append(entry)
    _seconds[entry[1]] += 0.0  # listed in the order phases start: a parent before its children
    try:
        yield
    finally:
        _open.pop()
        _seconds[entry[1]] += time.perf_counter() - entry[2]


def count(name: str, n: int = 1) -> None:
    _counts[name] += n


def take() -> dict:
    """The phases' seconds (rounded to 0.1 s) and the counts since the last take; then starts afresh.

    A phase still open counts up to now (a record written inside its "save" phase includes it)."""
    now = time.perf_counter()
    for entry in _open:
        _seconds[entry[1]] += now - entry[2]
        entry[2] = now
    taken = {"seconds": {k: round(v, 1) for k, v in _seconds.items()}, "counts": dict(_counts)}
    _seconds.clear()
    _counts.clear()
    return taken
