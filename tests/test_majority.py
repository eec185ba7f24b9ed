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
