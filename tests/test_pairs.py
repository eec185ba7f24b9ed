"""build_pairs: filters, per-question drops, K uniform distinct pairs, determinism."""

from __future__ import annotations

import itertools

import polars as pl
import pytest

from irpo_data.pairs import build_pairs


def samples_table(spec: dict[str, list[tuple[bool, int, str, bool]]]) -> pl.DataFrame:
    """spec: question -> [(correct, n_tokens, finish_reason, well_formed), ...] per sample."""
    rows = []
    for qid, samples in spec.items():
        for idx, (correct, n_tokens, finish, well_formed) in enumerate(samples):
            rows.append({
                "question_id": qid, "sample_idx": idx, "prompt": f"prompt of {qid}", "gold": "7",
                "completion": f"{qid} answer {idx}", "n_tokens": n_tokens, "finish_reason": finish,
                "answer": "7" if correct else str(100 + idx), "correct": correct, "well_formed": well_formed,
            })  # fmt: skip
    return pl.DataFrame(rows)


OK = (True, 10, "stop", True)
WRONG = (False, 10, "stop", True)

SPEC = {
    "q_mixed": [OK, OK, OK, WRONG, WRONG],  # 3 x 2 = 6 combinations
    "q_two": [OK, WRONG],  # 1 combination
    "q_all_right": [OK, OK],
    "q_all_wrong": [WRONG, WRONG, WRONG],
    # Each wrong sample is dropped for a different reason, so no pair survives:
    "q_filtered": [OK, (False, 10, "length", True), (False, 99, "stop", True), (False, 10, "stop", False)],
    "q_nothing_usable": [(True, 10, "length", True), (False, 10, "stop", False)],
}


def test_drop_counts_are_derived_per_reason():
    _, stats = build_pairs(samples_table(SPEC), pairs_per_question=4, max_tokens=50, seed=0)
    assert stats["generations"] == 18
    assert stats["dropped_truncated"] == 2  # q_filtered[1], q_nothing_usable[0]
    assert stats["dropped_too_long"] == 1  # q_filtered[2]: 99 > 50 tokens
    assert stats["dropped_not_well_formed"] == 2  # q_filtered[3], q_nothing_usable[1]
    assert stats["generations_kept"] == 13
    assert stats["questions"] == 6
    assert stats["questions_no_usable_generation"] == 1  # q_nothing_usable
    assert stats["questions_no_correct"] == 1  # q_all_wrong
    assert stats["questions_no_wrong"] == 2  # q_all_right, q_filtered
    assert stats["questions_paired"] == 2
    assert stats["pairs"] == 4 + 1  # min(4, 6) for q_mixed, min(4, 1) for q_two


def test_every_pair_is_correct_over_wrong_within_one_question_and_distinct():
    table = samples_table(SPEC)
    pairs, _ = build_pairs(table, pairs_per_question=4, max_tokens=50, seed=3)
    by_text = {row["completion"]: row for row in table.iter_rows(named=True)}
    for row in pairs.iter_rows(named=True):
        chosen, rejected = by_text[row["chosen"]], by_text[row["rejected"]]
        assert chosen["correct"] and not rejected["correct"]
        assert chosen["question_id"] == rejected["question_id"] == row["question_id"]
        assert row["chosen_answer"] == "7" and row["rejected_answer"] != "7" and row["gold"] == "7"
        assert row["prompt"] == f"prompt of {row['question_id']}"
    keys = pairs.select("question_id", "chosen_sample_idx", "rejected_sample_idx").rows()
    assert len(keys) == len(set(keys))


def test_k_larger_than_combinations_takes_them_all():
    pairs, _ = build_pairs(samples_table(SPEC), pairs_per_question=100, max_tokens=50, seed=0)
    mixed = pairs.filter(pl.col("question_id") == "q_mixed")
    assert sorted(zip(mixed["chosen_sample_idx"], mixed["rejected_sample_idx"])) == list(itertools.product([0, 1, 2], [3, 4]))


def test_same_seed_same_pairs_whatever_the_row_order_and_other_seeds_differ():
    table = samples_table(SPEC)
    first, _ = build_pairs(table, pairs_per_question=2, max_tokens=50, seed=7)
    shuffled, _ = build_pairs(table.sample(fraction=1.0, shuffle=True, seed=1), pairs_per_question=2, max_tokens=50, seed=7)
    assert first.equals(shuffled)
    picks = {tuple(build_pairs(table, pairs_per_question=2, max_tokens=50, seed=s)[0]["chosen_sample_idx"]) + tuple(
        build_pairs(table, pairs_per_question=2, max_tokens=50, seed=s)[0]["rejected_sample_idx"]) for s in range(8)}
    assert len(picks) > 1


def test_pair_choice_is_uniform_over_combinations():
    # q_mixed has 6 combinations and K=1: over 600 seeds each should win ~100 times.
    table = samples_table({"q_mixed": SPEC["q_mixed"]})
    counts: dict[tuple, int] = {}
    for seed in range(600):
        row = build_pairs(table, pairs_per_question=1, max_tokens=50, seed=seed)[0].row(0, named=True)
        key = (row["chosen_sample_idx"], row["rejected_sample_idx"])
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 6 and min(counts.values()) > 60 and max(counts.values()) < 140


def test_empty_samples_give_no_pairs_and_zero_counts():
    empty = samples_table(SPEC).clear()  # the right columns, no rows
    pairs, stats = build_pairs(empty, pairs_per_question=4, max_tokens=50, seed=0)
    assert pairs.height == 0 and stats["pairs"] == 0 and stats["questions"] == 0


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="lacks column\\(s\\) well_formed"):
        build_pairs(samples_table(SPEC).drop("well_formed"))
