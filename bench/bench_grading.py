"""Grading throughput and its bound: GSM8K and MATH answers against math-verify alone, and the hostile set.

    python bench/bench_grading.py [SHARED_DATA_DIR]

Rows, all measured in this run:
- GSM8K, one core: every GSM8K training solution written three ways models write them
  ("#### N", "Final answer: N", "The answer is $N.") and graded against its own gold (right) and
  the next question's (mostly wrong): 7,473 x 3 x 2 = 44,838 grades. Target: >= 5,000 answers/s,
  every verdict equal to math-verify's verify() on the answer we extracted.
- MATH, one core and all cores: 2,000 MATH training solutions (LaTeX answers: fractions, radicals,
  intervals, matrices), each against its own gold and the next one's: 4,000 grades through
  grade_many (math-verify in worker processes), parity with math-verify run in this process.
- hostile: every answer of tests/assets/hostile.py (power towers, factorials of huge numbers,
  100 kB of braces, ...); the worst seconds per answer must stay under grading.GRADE_TIMEOUT_S,
  with the screen on (as shipped) and off (the deadline alone: each tower costs the whole bound).
Baseline: math-verify's parse + verify on the same completions, in this process.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from math_verify import parse, verify

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from assets.hostile import HOSTILE  # noqa: E402

from irpo import grading, verifier  # noqa: E402
from irpo.tasks import get_task  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def gsm8k_work(data_dir: Path) -> list[tuple[str, str]]:
    task = get_task("gsm8k")
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines()]
    golds = [q.gold for q in task.load("train", str(data_dir / "gsm8k")).questions]
    work = []
    for i, row in enumerate(rows):
        body, _, final = row["answer"].rpartition("####")
        for style in ("{body}#### {gold}", "{body}Final answer: {gold}", "{body}The answer is ${gold}."):
            text = style.format(body=body, gold=final.strip())
            work += [(text, golds[i]), (text, golds[(i + 1) % len(golds)])]
    return work


def math_work(data_dir: Path, count: int = 2000) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (data_dir / "math" / "train.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["answer"]][:count]
    return [
        (r["solution"], gold) for i, r in enumerate(rows) for gold in (r["answer"], rows[(i + 1) % len(rows)]["answer"])
    ]


def _wrap(text: str) -> str:
    text = text.replace("\\$", "")  # as the verifier hands LaTeX to math-verify
    return text if "$" in text else f"${text}$"


def math_verify_verdict(gold: str, answer: str, latex: bool) -> bool:
    g, a = (parse(_wrap(x) if latex or "\\" in x else x, parsing_timeout=None) for x in (gold, answer))
    return bool(g and a and verify(g, a, timeout_seconds=None))


def timed_grades(task: str, work, workers: int):
    grading._PARSED.clear(), grading._VERIFIED.clear()
    start = time.perf_counter()
    grades = grading.grade_many(task, [t for t, _ in work], [g for _, g in work], workers=workers)
    return grades, len(work) / (time.perf_counter() - start)


def baseline_rate(work, latex: bool, count: int = 1000) -> float:
    start = time.perf_counter()
    for text, gold in work[:count]:
        verify(
            parse(_wrap(gold) if latex else gold, parsing_timeout=None),
            parse(text, parsing_timeout=None),
            timeout_seconds=None,
        )
    return min(count, len(work)) / (time.perf_counter() - start)


def mismatches(work, grades, latex: bool) -> int:
    return sum(
        g.answer is not None and not g.timed_out and g.correct != math_verify_verdict(gold, g.answer, latex)
        for (_, gold), g in zip(work, grades)
    )


def hostile_worst(screen: bool) -> tuple[float, str, int]:
    """(worst seconds, its name, answers timed out) over the hostile set, cold caches."""
    real = verifier.too_expensive
    if not screen:
        verifier.too_expensive = lambda text: False
    try:
        grading._PARSED.clear(), grading._VERIFIED.clear()
        times = {}
        timed_out = 0
        for name, text in HOSTILE.items():
            start = time.perf_counter()
            timed_out += grading.grade("math", text, "1").timed_out
            times[name] = time.perf_counter() - start
    finally:
        verifier.too_expensive = real
    worst = max(times, key=times.get)
    return times[worst], worst, timed_out


def main() -> None:
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # the baseline's own warnings
    data_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    gsm8k, math = gsm8k_work(data_dir), math_work(data_dir)
    verifier.start_workers(cores)  # outside the timings
    math_all_cores, math_all_rate = timed_grades("math", math, workers=cores)

    if hasattr(os, "sched_setaffinity"):  # the rest on one core (workers inherit it), as the target says
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    verifier.close_workers()  # workers pinned to that core from here on
    verifier.start_workers(1)
    gsm8k_grades, gsm8k_rate = timed_grades("gsm8k", gsm8k, workers=1)
    math_grades, math_rate = timed_grades("math", math, workers=1)
    rows = [
        ("GSM8K, 1 core", len(gsm8k), gsm8k_rate, baseline_rate(gsm8k, False), mismatches(gsm8k, gsm8k_grades, False)),
        ("MATH, 1 core", len(math), math_rate, baseline_rate(math, True), mismatches(math, math_grades, True)),
        (f"MATH, {cores} cores (grade_many)", len(math), math_all_rate, None, mismatches(math, math_all_cores, True)),
    ]
    print(f"{'answers':32} {'count':>7} {'answers/s':>10} {'math-verify/s':>14} {'verdicts differ':>16}")
    for name, count, rate, base, differ in rows:
        print(f"{name:32} {count:7} {rate:10.0f} {'' if base is None else f'{base:14.0f}':>14} {differ:16}")
    worst_on, name_on, out_on = hostile_worst(screen=True)
    worst_off, name_off, out_off = hostile_worst(screen=False)
    bound = grading.GRADE_TIMEOUT_S
    print(
        f"hostile ({len(HOSTILE)} answers), screen on:  worst {worst_on:.3f} s per answer ({name_on}), "
        f"{out_on} timed out"
    )
    print(
        f"hostile ({len(HOSTILE)} answers), screen off: worst {worst_off:.3f} s per answer ({name_off}), "
        f"{out_off} timed out"
    )
    ok_rate, ok_bound = gsm8k_rate >= 5000 and rows[0][4] == 0, max(worst_on, worst_off) < bound
    print(
        f"GSM8K target 5,000/s with identical verdicts: {'met' if ok_rate else 'MISSED'}; "
        f"hostile under the {bound:.0f} s bound: {'met' if ok_bound else 'MISSED'}"
    )
    print(
        json.dumps(
            {
                "bench": "grading",
                "gsm8k_per_s": round(gsm8k_rate),
                "gsm8k_mismatches": rows[0][4],
                "math_per_s": round(math_rate),
                "math_all_cores_per_s": round(math_all_rate),
                "math_mismatches": rows[1][4],
                "cores": cores,
                "hostile_worst_s": round(worst_on, 3),
                "hostile_worst_s_screen_off": round(worst_off, 3),
                "bound_s": bound,
            }
        )
    )


if __name__ == "__main__":
    main()
