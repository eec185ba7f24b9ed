"""Time build_pairs on a GSM8K-sized samples table against a plain-Python loop baseline.

    python bench/bench_pairs.py            # 7,500 questions x 30 samples = 225,000 rows

Both implement the same rule (filters, per-question drops, K uniform pairs); the loop is what
one would write without polars. Prints a table and one JSON line. Target: under 1 s.
"""

from __future__ import annotations

import json
import platform
import random
import time

import polars as pl

from irpo_data.pairs import build_pairs


def synthetic_samples(questions: int, per_question: int, seed: int = 0) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = {k: [] for k in ("question_id", "sample_idx", "prompt", "gold", "completion", "n_tokens", "finish_reason", "answer", "correct", "well_formed")}
    for q in range(questions):
        p_right = rng.random()  # questions range from hopeless to easy, as in a real run
        for s in range(per_question):
            correct = rng.random() < p_right
            n_tokens = int(rng.expovariate(1 / 200)) + 20
            for key, value in (
                ("question_id", f"gsm8k/train/{q}"), ("sample_idx", s), ("prompt", f"prompt {q}"), ("gold", "7"),
                ("completion", f"answer {q}-{s}"), ("n_tokens", n_tokens), ("finish_reason", "length" if n_tokens > 512 else "stop"),
                ("answer", "7" if correct else "8"), ("correct", correct), ("well_formed", rng.random() < 0.9),
            ):  # fmt: skip
                rows[key].append(value)
    return pl.DataFrame(rows)


def python_loop_pairs(records: list[dict], k: int, max_tokens: int, seed: int) -> int:
    rng = random.Random(seed)
    by_question: dict[str, list[dict]] = {}
    for r in records:
        if r["finish_reason"] == "length" or r["n_tokens"] > max_tokens or not r["well_formed"]:
            continue
        by_question.setdefault(r["question_id"], []).append(r)
    pairs = 0
    for qid in sorted(by_question):
        rows = by_question[qid]
        right = [r for r in rows if r["correct"]]
        wrong = [r for r in rows if not r["correct"]]
        combos = [(a["sample_idx"], b["sample_idx"]) for a in right for b in wrong]
        pairs += len(rng.sample(combos, min(k, len(combos))))
    return pairs


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    samples = synthetic_samples(7500, 30)
    records = samples.to_dicts()
    ours_s, (pairs, stats) = best_of(lambda: build_pairs(samples, pairs_per_question=10, max_tokens=512, seed=0))
    loop_s, loop_pairs = best_of(lambda: python_loop_pairs(records, 10, 512, 0), repeats=1)
    assert loop_pairs == pairs.height, (loop_pairs, pairs.height)  # same rule, same count
    print(f"{'implementation':28} {'seconds':>8} {'pairs':>8}")
    print(f"{'build_pairs (polars)':28} {ours_s:8.3f} {pairs.height:8d}")
    print(f"{'plain-Python loop':28} {loop_s:8.3f} {loop_pairs:8d}")
    print(f"speed-up {loop_s / ours_s:.1f}x; target under 1 s: {'met' if ours_s < 1 else 'MISSED'}")
    print(json.dumps({"bench": "pairs", "rows": samples.height, "seconds": round(ours_s, 4), "baseline_seconds": round(loop_s, 4),
                      "pairs": pairs.height, "machine": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()
