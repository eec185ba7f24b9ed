"""Majority vote (irpo.majority) on real grading: math-verify decides equivalence."""

from __future__ import annotations

from irpo.majority import majority_vote, score_samples


def test_missing_answers_never_vote():
    # Three samples gave no answer; lm-eval's stock filter would let "[invalid]" win here.
    assert majority_vote("gsm8k", [None, None, None, "12", ""]) == "12"


def test_all_missing_gives_none():
    assert majority_vote("gsm8k", [None, None, "  "]) is None
    assert majority_vote("math", []) is None


def test_equivalent_answers_vote_together():
    # Three spellings of one half beat two votes for 3.
    answers = ["3", "0.5", "\\frac{1}{2}", "3", "1/2"]
    assert majority_vote("math", answers) == "0.5"
    assert majority_vote("gsm8k", ["1,000", "1000", "999", "999"]) == "1,000"


def test_ties_go_to_the_answer_voted_first():
    assert majority_vote("gsm8k", ["7", "9", "9", "7"]) == "7"
    assert majority_vote("gsm8k", ["9", "7", "7", "9"]) == "9"
    assert majority_vote("arc_challenge", ["B", "c", "C", "b"]) == "B"


def test_majority_is_not_fooled_by_a_chain_of_near_answers():
    # Each answer is compared with one spelling per group, so distinct numbers stay apart.
    assert majority_vote("gsm8k", ["1", "2", "2", "3", "3", "3"]) == "3"


def test_score_samples_reads_maj_pass_and_mean_from_the_same_samples():
    completions = [
        "6 + 6 = 12. The answer is 12.",
        "Final answer: 12",
        "I think it is 13. The answer is 13.",
        "no idea",
    ]
    scores = score_samples("gsm8k", completions, "12")
    assert scores.majority_correct and scores.any_correct and scores.majority_answer == "12"
    assert scores.sample_accuracy == 0.5
    wrong = score_samples("gsm8k", ["The answer is 5.", "The answer is 5.", "The answer is 12."], "12")
    assert not wrong.majority_correct and wrong.any_correct and abs(wrong.sample_accuracy - 1 / 3) < 1e-9
    none = score_samples("gsm8k", ["garbage", "<script>", "}}}}{{{{"], "12")
    assert none.majority_answer is None and not none.majority_correct and not none.any_correct


def test_vote_labels_by_hand():
    """ScPO's labels on tables worked out by hand: equivalent answers vote together, a missing answer never
    votes, ties at the top go to the earliest first vote and at the bottom to the latest."""
    from irpo.majority import vote_counts, vote_labels

    # 6 samples: "4" x2 and "4.0" (one answer, 3 votes), "5" x1, "7" x1, one without an answer.
    answers = ["4", "5", "4.0", None, "7", "4"]
    assert [(v.answer, v.samples) for v in vote_counts("gsm8k", answers)] == [
        ("4", (0, 2, 5)),
        ("5", (1,)),
        ("7", (4,)),
    ]
    labels = vote_labels("gsm8k", answers)
    # The top: "4" with 3 votes. The bottom: "5" and "7" tie at 1; "7" was voted last, so it loses.
    assert labels.winner.answer == "4" and labels.loser.answer == "7" and labels.loser.samples == (4,)
    assert labels.margin == (3 - 1) / 6
    # "2" and "3" have 2 votes each: "2" was voted first and wins, "3" loses, and the margin is 0.
    tie = vote_labels("gsm8k", ["2", "3", "3", "2"])
    assert (tie.winner.answer, tie.loser.answer, tie.margin) == ("2", "3", 0.0)
    # All equal, or no answers at all: no loser, no pairs.
    assert vote_labels("gsm8k", ["9", "9.0", "9"]) is None and vote_labels("gsm8k", [None, "", None]) is None
