"""Grading throughput on GSM8K answers, on one core, against math-verify alone.

    python bench/bench_grading.py

Answers: every GSM8K training solution, written three ways models write them ("#### N",
"Final answer: N", "The answer is $N.") and graded against its own gold (right) and against
the next question's gold (mostly wrong): 7,473 x 3 x 2 = 44,838 grades. Baseline: math-verify's
parse + verify on the same completions. Parity: our verdict must equal math-verify's verify()
on the answer we extracted, for every one. Target: at least 5,000 answers/s.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from math_verify import parse, verify

from irpo_data import grading
from irpo_data.tasks import get_task

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


def completions(data_dir: Path):
    task = get_task("gsm8k")
    rows = [json.loads(line) for line in (data_dir / "train.jsonl").read_text().splitlines()]
    golds = [q.gold for q in task.load("train", str(data_dir)).questions]
    work = []
    for i, row in enumerate(rows):
        body, _, _ = row["answer"].rpartition("####")
        for style in ("{body}#### {gold}", "{body}Final answer: {gold}", "{body}The answer is ${gold}."):
            text = style.format(body=body, gold=row["answer"].rpartition("####")[2].strip())
            work.append((text, golds[i]))
            work.append((text, golds[(i + 1) % len(golds)]))
    return work


def main() -> None:
    data_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says
    work = completions(data_dir)
    task = get_task("gsm8k")

    grading._parse.cache_clear(), grading._verify.cache_clear()
    start = time.perf_counter()
    ours = [grading.grade(task, text, gold) for text, gold in work]
    ours_s = time.perf_counter() - start

    subset = work[:5000]  # math-verify alone is slow; time it on a slice
    start = time.perf_counter()
    for text, gold in subset:
        verify(parse(gold, parsing_timeout=None), parse(text, parsing_timeout=None), timeout_seconds=None)
    mv_rate = len(subset) / (time.perf_counter() - start)

    mismatches = [
        (gold, g.answer) for (text, gold), g in zip(work, ours)
        if g.answer is not None and g.correct != verify(parse(gold, parsing_timeout=None), parse(g.answer, parsing_timeout=None), timeout_seconds=None)
    ]  # fmt: skip
    rate = len(work) / ours_s
    print(f"{'grader':32} {'answers/s':>10}")
    print(f"{'irpo_data.grading.grade':32} {rate:10.0f}")
    print(f"{'math-verify parse+verify alone':32} {mv_rate:10.0f}")
    print(f"{len(work)} answers, {sum(g.correct for g in ours)} correct, {len(mismatches)} verdicts differ from math-verify's")
    print(f"speed-up {rate / mv_rate:.1f}x; target 5,000/s: {'met' if rate >= 5000 else 'MISSED'}")
    print(json.dumps({"bench": "grading", "answers": len(work), "answers_per_s": round(rate), "math_verify_per_s": round(mv_rate),
                      "verdict_mismatches": len(mismatches), "cores": 1}))


if __name__ == "__main__":
    main()
