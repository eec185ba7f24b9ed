"""Time build_pairs on a GSM8K-sized samples table against a plain-Python loop baseline.

    python bench/bench_pairs.py            # 7,500 questions x 30 samples = 225,000 rows

Two rules, each implemented both ways (the loop is what one would write without polars):
- the paper's (the cards' default): winners right and well formed, every other finished answer a
  loser, a gold solution per question among the winners, K pairs cycling both sets, at most 60k;
- irpo's earlier one (scheme=distinct, drop_off_format, no gold): K distinct random pairs.
Prints a table and one JSON line. Target: under 1 s for each.
"""

from __future__ import annotations

import json
import platform
import random
import time

import polars as pl

from irpo.card import PairsConfig
from irpo.pairs import REQUIRED_COLUMNS, build_pairs

PAPER = PairsConfig(pairs_per_question=10, max_tokens=512)
DISTINCT = PairsConfig(
    pairs_per_question=10, max_tokens=512, scheme="distinct", drop_off_format=True, gold_winner="never"
)


def synthetic_samples(questions: int, per_question: int, seed: int = 0) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = {k: [] for k in REQUIRED_COLUMNS}
    for q in range(questions):
        p_right = rng.random()  # questions range from hopeless to easy, as in a real run
        for s in range(per_question):
            correct = rng.random() < p_right
            n_tokens = int(rng.expovariate(1 / 200)) + 20
            for key, value in (
                ("question_id", f"gsm8k/train/{q}"),
                ("sample_idx", s),
                ("prompt", f"prompt {q}"),
                ("gold", "7"),
                ("completion", f"answer {q}-{s}"),
                ("n_tokens", n_tokens),
                ("finish_reason", "length" if n_tokens > 512 else "stop"),
                ("answer", "7" if correct else "8"),
                ("correct", correct),
                ("well_formed", rng.random() < 0.9),
            ):
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


def python_loop_cycle(records: list[dict], questions: int, k: int, max_tokens: int, max_pairs: int) -> int:
    """The paper's rule: count of the K cycled pairs per question (each has a gold winner), capped."""
    winners, losers = [0] * questions, [0] * questions
    for r in records:
        if r["finish_reason"] == "length" or r["n_tokens"] > max_tokens:
            continue
        q = int(r["question_id"].rsplit("/", 1)[1])
        if r["correct"] and r["well_formed"]:
            winners[q] += 1
        else:
            losers[q] += 1
    rng = random.Random(0)
    pairs = []
    for q in range(questions):
        if losers[q]:  # the gold solution is always a winner
            w, l = list(range(winners[q] + 1)), list(range(losers[q]))
            rng.shuffle(w), rng.shuffle(l)
            pairs += [(q, w[i % len(w)], l[i % len(l)]) for i in range(k)]
    return min(len(pairs), max_pairs)


def gold_rows(questions: int) -> pl.DataFrame:
    ids = [f"gsm8k/train/{q}" for q in range(questions)]
    return pl.DataFrame(
        {
            "question_id": ids,
            "completion": ["gold"] * questions,
            "n_tokens": [100] * questions,
            "correct": [True] * questions,
            "well_formed": [True] * questions,
        }
    )


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    samples, gold = synthetic_samples(7500, 30), gold_rows(7500)
    records = samples.to_dicts()
    paper_s, (paper, _) = best_of(lambda: build_pairs(samples, PAPER, seed=0, gold=gold))
    paper_loop_s, paper_loop = best_of(lambda: python_loop_cycle(records, 7500, 10, 512, 60000), repeats=1)
    ours_s, (pairs, _) = best_of(lambda: build_pairs(samples, DISTINCT, seed=0))
    loop_s, loop_pairs = best_of(lambda: python_loop_pairs(records, 10, 512, 0), repeats=1)
    assert loop_pairs == pairs.height and paper_loop == paper.height, (
        loop_pairs,
        pairs.height,
        paper_loop,
        paper.height,
    )
    print(f"{'implementation':44} {'seconds':>8} {'pairs':>8}")
    print(f"{'build_pairs, paper rule (polars)':44} {paper_s:8.3f} {paper.height:8d}")
    print(f"{'plain-Python loop, paper rule':44} {paper_loop_s:8.3f} {paper_loop:8d}")
    print(f"{'build_pairs, distinct rule (polars)':44} {ours_s:8.3f} {pairs.height:8d}")
    print(f"{'plain-Python loop, distinct rule':44} {loop_s:8.3f} {loop_pairs:8d}")
    met = max(paper_s, ours_s) < 1
    print(
        f"speed-up {paper_loop_s / paper_s:.1f}x (paper rule), {loop_s / ours_s:.1f}x (distinct); target "
        f"under 1 s: {'met' if met else 'MISSED'}"
    )
    print(
        json.dumps(
            {
                "bench": "pairs",
                "rows": samples.height,
                "paper_seconds": round(paper_s, 4),
                "paper_pairs": paper.height,
                "distinct_seconds": round(ours_s, 4),
                "baseline_seconds": round(loop_s, 4),
                "pairs": pairs.height,
                "machine": platform.processor() or platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
