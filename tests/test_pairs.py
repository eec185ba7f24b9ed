"""build_pairs: filters, per-question drops, K uniform distinct pairs, determinism."""

from __future__ import annotations

import itertools

import polars as pl
import pytest

from irpo.card import PairsConfig
from irpo.pairs import build_pairs
from irpo.tasks import get_task

# irpo's rule before the paper's was adopted: distinct random pairs, off-format answers dropped.
DISTINCT = dict(scheme="distinct", drop_off_format=True, gold_winner="never")


def pairs_of(table, k, max_tokens=50, seed=0, **settings):
    return build_pairs(
        table, PairsConfig(pairs_per_question=k, max_tokens=max_tokens, **{**DISTINCT, **settings}), seed
    )


def samples_table(spec: dict[str, list[tuple[bool, int, str, bool]]]) -> pl.DataFrame:
    """spec: question -> [(correct, n_tokens, finish_reason, well_formed), ...] per sample."""
    rows = []
    for qid, samples in spec.items():
        for idx, (correct, n_tokens, finish, well_formed) in enumerate(samples):
            rows.append(
                {
                    "question_id": qid,
                    "sample_idx": idx,
                    "prompt": f"prompt of {qid}",
                    "gold": "7",
                    "completion": f"{qid} answer {idx}",
                    "n_tokens": n_tokens,
                    "finish_reason": finish,
                    "answer": "7" if correct else str(100 + idx),
                    "correct": correct,
                    "well_formed": well_formed,
                }
            )
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
    _, stats = pairs_of(samples_table(SPEC), 4, seed=0)
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
    pairs, _ = pairs_of(table, 4, seed=3)
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
    pairs, _ = pairs_of(samples_table(SPEC), 100, seed=0)
    mixed = pairs.filter(pl.col("question_id") == "q_mixed")
    assert sorted(zip(mixed["chosen_sample_idx"], mixed["rejected_sample_idx"])) == list(
        itertools.product([0, 1, 2], [3, 4])
    )


def test_same_seed_same_pairs_whatever_the_row_order_and_other_seeds_differ():
    table = samples_table(SPEC)
    first, _ = pairs_of(table, 2, seed=7)
    shuffled, _ = pairs_of(table.sample(fraction=1.0, shuffle=True, seed=1), 2, seed=7)
    assert first.equals(shuffled)
    picks = {
        tuple(pairs_of(table, 2, seed=s)[0]["chosen_sample_idx"])
        + tuple(pairs_of(table, 2, seed=s)[0]["rejected_sample_idx"])
        for s in range(8)
    }
    assert len(picks) > 1


def test_pair_choice_is_uniform_over_combinations():
    # q_mixed has 6 combinations and K=1: over 300 seeds each should win ~50 times (sd 6.5).
    table = samples_table({"q_mixed": SPEC["q_mixed"]})
    counts: dict[tuple, int] = {}
    for seed in range(300):
        row = pairs_of(table, 1, seed=seed)[0].row(0, named=True)
        key = (row["chosen_sample_idx"], row["rejected_sample_idx"])
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 6 and min(counts.values()) > 25 and max(counts.values()) < 75


def test_empty_samples_give_no_pairs_and_zero_counts():
    empty = samples_table(SPEC).clear()  # the right columns, no rows
    pairs, stats = pairs_of(empty, 4, seed=0)
    assert pairs.height == 0 and stats["pairs"] == 0 and stats["questions"] == 0


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="lacks column\\(s\\) well_formed"):
        pairs_of(samples_table(SPEC).drop("well_formed"), 4)


# --- the paper's rules (Pang et al. 2024, §2-3): cycled pairs, gold winners, off-format losers ---

PAPER = PairsConfig(pairs_per_question=10, max_tokens=50)  # the defaults are the paper's


def gold_table(questions, correct=True, well_formed=True, n_tokens=5):
    return pl.DataFrame(
        {
            "question_id": list(questions),
            "completion": [f"gold of {q}" for q in questions],
            "n_tokens": [n_tokens] * len(questions),
            "correct": [correct] * len(questions),
            "well_formed": [well_formed] * len(questions),
        }
    )


def test_cycled_pairs_are_exactly_k_per_question_using_every_sample_evenly():
    # q_mixed: 3 winners, 2 losers; K = 10 cycles W five times... and L five times over.
    table = samples_table({"q_mixed": SPEC["q_mixed"], "q_two": SPEC["q_two"]})
    pairs, stats = build_pairs(table, PAPER, seed=0)
    assert pairs.group_by("question_id").len().sort("question_id").rows() == [("q_mixed", 10), ("q_two", 10)]
    mixed = pairs.filter(pl.col("question_id") == "q_mixed")
    for column, members in (("chosen_sample_idx", {0, 1, 2}), ("rejected_sample_idx", {3, 4})):
        uses = mixed.group_by(column).len()["len"].to_list()
        assert set(mixed[column]) == members and max(uses) - min(uses) <= 1, (column, uses)
    # Both sets advance together: pair k is (W[k mod 3], L[k mod 2]), so pairs repeat every 6.
    keys = list(zip(mixed["chosen_sample_idx"], mixed["rejected_sample_idx"]))
    assert keys[:4] == keys[6:10] and len(set(keys[:6])) == 6
    assert stats["pairs"] == 20 and set(pairs["chosen_source"]) == {"sample"}


def test_cycled_pairs_depend_on_the_seed_and_on_nothing_else_in_the_table():
    alone = build_pairs(samples_table({"q_mixed": SPEC["q_mixed"]}), PAPER, seed=3)[0]
    crowded = build_pairs(samples_table(SPEC), PAPER, seed=3)[0].filter(pl.col("question_id") == "q_mixed")
    assert alone.equals(crowded)
    others = {
        tuple(build_pairs(samples_table({"q_mixed": SPEC["q_mixed"]}), PAPER, seed=s)[0]["chosen_sample_idx"])
        for s in range(6)
    }
    assert len(others) > 1


def test_off_format_answers_are_losers_and_counted():
    # q_filtered[3] is wrong and off-format; an off-format *right* answer is a loser too (reward 0).
    spec = {"q": [OK, (True, 10, "stop", False), (False, 10, "stop", False), (True, 10, "length", True)]}
    pairs, stats = build_pairs(samples_table(spec), PAPER, seed=0)
    assert set(pairs["rejected_sample_idx"]) == {1, 2} and set(pairs["chosen_sample_idx"]) == {0}
    assert stats["losers_off_format"] == 2 and stats["dropped_not_well_formed"] == 0 and stats["dropped_truncated"] == 1
    dropped, dropped_stats = build_pairs(samples_table(spec), PairsConfig(max_tokens=50, drop_off_format=True), seed=0)
    assert dropped.height == 0 and dropped_stats["dropped_not_well_formed"] == 2


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("always", {"q_mixed", "q_two", "q_all_wrong", "q_filtered", "q_nothing_usable"}),
        ("when_none_correct", {"q_all_wrong", "q_nothing_usable"}),
        ("never", set()),
    ],
)
def test_gold_solutions_join_the_winners_where_the_card_says(mode, expected):
    pairs, stats = build_pairs(
        samples_table(SPEC), PairsConfig(max_tokens=50, gold_winner=mode), seed=0, gold=gold_table(SPEC)
    )
    gold_rows = pairs.filter(pl.col("chosen_source") == "gold")
    assert set(gold_rows["question_id"]) == expected
    assert (gold_rows["chosen_sample_idx"] == -1).all() and (
        gold_rows["chosen"] == "gold of " + gold_rows["question_id"]
    ).all()
    assert (gold_rows["chosen_answer"] == "7").all()  # the gold answer itself
    # q_all_wrong has no right sample: only a gold winner gives it pairs.
    assert ("q_all_wrong" in set(pairs["question_id"])) == (mode != "never")


def test_a_gold_solution_the_grader_rejects_or_too_long_is_not_a_winner():
    table = samples_table({"q_all_wrong": SPEC["q_all_wrong"]})
    for gold in (
        gold_table(["q_all_wrong"], correct=False),
        gold_table(["q_all_wrong"], well_formed=False),
        gold_table(["q_all_wrong"], n_tokens=99),
    ):
        pairs, stats = build_pairs(table, PAPER, seed=0, gold=gold)
        assert pairs.height == 0 and stats["gold_winners"] == 0 and stats["gold_not_accepted"] == 1


def test_max_pairs_keeps_a_seeded_random_subset_and_counts_the_rest():
    full, _ = build_pairs(samples_table(SPEC), PAPER, seed=0, gold=gold_table(SPEC))
    capped, stats = build_pairs(
        samples_table(SPEC), PairsConfig(max_tokens=50, max_pairs=17), seed=0, gold=gold_table(SPEC)
    )
    assert capped.height == 17 and stats["dropped_over_max_pairs"] == full.height - 17
    assert capped.join(full, on=capped.columns, how="anti").height == 0  # a subset of the uncapped pairs
    again, _ = build_pairs(samples_table(SPEC), PairsConfig(max_tokens=50, max_pairs=17), seed=0, gold=gold_table(SPEC))
    other, _ = build_pairs(samples_table(SPEC), PairsConfig(max_tokens=50, max_pairs=17), seed=1, gold=gold_table(SPEC))
    assert capped.equals(again) and not capped.equals(other)


# --- labels by vote (pairs.label vote or mixed; ScPO, Prasad et al. 2024) ---


def vote_samples(spec: dict[str, tuple[str, list]]) -> pl.DataFrame:
    """spec: question -> (gold, [(answer, well_formed, finish_reason), ...]); correct is null without gold."""
    rows = []
    for qid, (gold, samples) in spec.items():
        for idx, (answer, well_formed, finish) in enumerate(samples):
            rows.append(
                {
                    "question_id": qid,
                    "sample_idx": idx,
                    "prompt": f"prompt of {qid}",
                    "gold": gold,
                    "completion": f"{qid} says {answer} ({idx})",
                    "n_tokens": 10,
                    "finish_reason": finish,
                    "answer": answer,
                    "correct": (answer == gold) if gold else None,
                    "well_formed": well_formed,
                }
            )
    return pl.DataFrame(rows, schema_overrides={"correct": pl.Boolean, "answer": pl.String})


def test_labels_by_vote_on_a_table_worked_out_by_hand():
    """Winners are the most-voted answer's samples, losers the least-voted's, counted as maj@k counts (equivalent
    answers together, no answer never votes, ties as majority_vote breaks them); the pairs weigh the margin; a
    question with one answer, or all tied, has none; the gold is ignored under vote and no gold solution joins."""
    ok = lambda a: (a, True, "stop")  # noqa: E731
    table = vote_samples(
        {
            # "4" and "4.0" are one answer with 3 votes (samples 0, 2, 5); "5" and "7" have 1; sample 3 none.
            # "7" was voted last of the two least-voted: it loses. Margin (3 - 1) / 6. The gold says 5: the vote is
            # wrong here, and under vote it wins all the same.
            "q_vote": ("5", [ok("4"), ok("5"), ok("4.0"), ok(None), ok("7"), ok("4")]),
            # One answer (and an unanswered sample): no loser.
            "q_unanimous": ("", [ok("9"), ok("9.0"), ok(None)]),
            # 2 votes each: a tie, margin 0, no pairs.
            "q_tied": ("", [ok("2"), ok("3"), ok("3"), ok("2")]),
            # No gold: "8" has 2 votes (one off-format: it sits out), "6" has 1; "8" cut off counts its vote (as
            # maj@k) but is no winner. Margin (3 - 1) / 4.
            "q_no_gold": ("", [ok("8"), ("8", False, "stop"), ok("6"), ("8", True, "length")]),
        }
    )
    config = PairsConfig(pairs_per_question=4, max_tokens=50, label="vote")
    gold = gold_table(["q_vote"])
    pairs, stats = build_pairs(table, config, seed=0, gold=gold, task=get_task("gsm8k"))
    by_question = {q: group for (q,), group in pairs.group_by("question_id")}
    assert set(by_question) == {"q_vote", "q_no_gold"}
    q = by_question["q_vote"]
    assert set(q["chosen_sample_idx"]) == {0, 2, 5} and set(q["rejected_sample_idx"]) == {4}
    assert set(q["chosen_source"]) == {"sample"}  # no gold solution under a vote
    assert q["weight"].to_list() == [2 / 6] * 4 and set(q["label"]) == {"vote"}
    q = by_question["q_no_gold"]
    assert set(q["chosen_sample_idx"]) == {0} and set(q["rejected_sample_idx"]) == {2}
    assert q["weight"].to_list() == [0.5] * 4 and set(q["gold"]) == {""}
    assert stats["questions_labelled_by_vote"] == 4 and stats["questions_vote_unanimous"] == 1
    assert stats["questions_vote_tied"] == 1 and stats["pairs_labelled_by_vote"] == 8
    assert (stats["vote_winner_correct"], stats["vote_winner_judged"]) == (0, 1)
    assert stats["gold_winners"] == 0
    # mixed: a question with gold is labelled by it (gold winner and all), one without by the vote.
    mixed, stats = build_pairs(
        table, PairsConfig(pairs_per_question=4, max_tokens=50, label="mixed"), 0, gold, get_task("gsm8k")
    )
    q = mixed.filter(pl.col("question_id") == "q_vote")
    assert set(q["label"]) == {"gold"} and q["weight"].to_list() == [1.0] * 4
    assert set(q["chosen_sample_idx"]) <= {1, -1} and -1 in set(q["chosen_sample_idx"])  # "5" and the gold
    assert set(mixed.filter(pl.col("question_id") == "q_no_gold")["label"]) == {"vote"}
    assert (stats["questions_labelled_by_gold"], stats["questions_labelled_by_vote"]) == (1, 3)
    # gold (the paper's) has neither column, so existing pair tables keep their fingerprints.
    plain, _ = build_pairs(table.filter(pl.col("gold") != ""), PairsConfig(pairs_per_question=4, max_tokens=50), 0)
    assert "weight" not in plain.columns and "label" not in plain.columns
    with pytest.raises(ValueError, match="needs the task"):
        build_pairs(table, config, 0)
