"""Grading: answers written the way models write them, traps, hostile output, math-verify parity."""

from __future__ import annotations

import pytest
from math_verify import parse, verify

from irpo.grading import Grade, grade
from irpo.tasks import get_task

MINERVA = get_task("math", prompt="minerva")

# (task, completion, gold) -> (answer, correct, well_formed), each worked out by hand.
CASES = [
    ("gsm8k", "12 + 6 = 18.\nFinal answer: 18", "18", ("18", True, True)),
    ("gsm8k", "So she pays $1,000 in all. The answer is $1,000.", "1000", ("1000", True, False)),
    ("gsm8k", "Total = 18\n#### 18", "18", ("18", True, False)),
    ("gsm8k", "Final answer: 18.00", "18", ("18", True, True)),
    ("gsm8k", "Final answer: $18.", "18", ("18", True, True)),
    ("gsm8k", "Final answer: 18 apples.", "18", ("18", True, True)),
    ("gsm8k", "Final answer: -3", "3", ("-3", False, True)),
    ("gsm8k", "Final answer: 17", "18", ("17", False, True)),
    # The answer ends at its sentence: the later 19 is commentary (math-verify alone says 19).
    ("gsm8k", "The answer is 18. Also 12+7 = 19", "18", ("18", True, False)),
    # The last answer phrase wins: a model that corrects itself is graded on the correction.
    ("gsm8k", "Final answer: 17\nWait, recount. Final answer: 18", "18", ("18", True, True)),
    ("gsm8k", "I think it is 18.", "18", (None, False, False)),
    ("gsm8k", "", "18", (None, False, False)),
    ("demo", "4 x 7 = 28. The answer is 28.", "28", ("28", True, True)),
    # MATH with the paper's prompt: "Final answer: ...", the answer in \\boxed.
    ("math", "so 2x = 1.\nFinal answer: $\\boxed{\\frac{1}{2}}$", "0.5", ("\\frac{1}{2}", True, True)),
    ("math", "Final answer: \\boxed{[2,5)}", "[2,5)", ("[2,5)", True, True)),
    ("math", "the domain is $\\boxed{[2,5)}$.\nFinal answer: [2,5)", "[2,5)", ("[2,5)", True, True)),
    ("math", "so the result is \\boxed{\\frac{1}{2}}", "0.5", ("\\frac{1}{2}", True, False)),
    ("math", "Final answer: $x^2+1$", "1+x^2", ("x^2+1", True, True)),
    ("math", "Final answer: $\\frac{3}{4}$", "\\frac{2}{3}", ("\\frac{3}{4}", False, True)),
    # MATH with Minerva's prompt: "The final answer is $X$. I hope it is correct."
    (MINERVA, "so the result is \\boxed{\\frac{1}{2}}", "0.5", ("\\frac{1}{2}", True, True)),
    (MINERVA, "Final Answer: The final answer is $[2,5)$. I hope it is correct.", "[2,5)", ("[2,5)", True, True)),
    (MINERVA, "The final answer is $x^2+1$.", "1+x^2", ("x^2+1", True, True)),
    (MINERVA, "The final answer is $\\frac{3}{4}$.", "\\frac{2}{3}", ("\\frac{3}{4}", False, True)),
    ("arc_challenge", "Plants need light.\nFinal answer: (B)", "B", ("B", True, True)),
    ("arc_challenge", "Final answer: B) the leaves", "B", ("B", True, True)),
    ("arc_challenge", "Final answer: 3", "3", ("3", True, True)),
    ("arc_challenge", "The answer is C.", "B", ("C", False, False)),
    # Answer labels on the last line (OpenAI's GSM8K solutions end "A: N"): graded, not well formed.
    ("gsm8k", "48 / 2 = 24 clips in May.\nA: 72", "72", ("72", True, False)),
    ("gsm8k", "She has 18.\nAnswer: 18", "18", ("18", True, False)),
    ("gsm8k", "Total: 18.\n**Answer:** 18", "18", ("18", True, False)),
    ("gsm8k", "Total: 18.\n**Answer**: **18**", "18", ("18", True, False)),
    ("gsm8k", "Total is 18 dollars.\nanswer: $18", "18", ("18", True, False)),
    ("gsm8k", "So 17 in all.\nA: 17", "18", ("17", False, False)),
    ("gsm8k", "So 17 in all.\n**Final answer:** 18", "18", ("18", True, True)),
    # Only the last line: an "Answer:" followed by more text is not a final answer.
    ("gsm8k", "Answer: 18\nBut wait, that counts twice.", "18", (None, False, False)),
    # The candidate that ends last wins: a label on the last line beats an earlier phrase...
    ("gsm8k", "The answer is 17.\nAnswer: 18", "18", ("18", True, False)),
    # ...and a phrase inside the last line, after its label, beats the label.
    ("gsm8k", "Answer: The answer is 18.", "18", ("18", True, False)),
    ("gsm8k", "Area: 18", "18", (None, False, False)),  # "Area:" is no answer label
    ("math", "Answer: $\\frac{1}{2}$", "0.5", ("\\frac{1}{2}", True, False)),
    ("gsm8k", "So 18 in all.\nFinal answer: \\boxed{18}", "18", ("18", True, True)),
    ("arc_challenge", "Light is needed.\nAnswer: (B)", "B", ("B", True, False)),
]


@pytest.mark.parametrize("task,completion,gold,expected", CASES)
def test_grade_table(task, completion, gold, expected):
    assert grade(task, completion, gold) == Grade(*expected)


def test_model_text_is_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    hostile = f"Final answer: __import__('os').system('touch {marker}')"
    result = grade("gsm8k", hostile, "0")
    assert not result.correct and not marker.exists()


def test_verdicts_match_math_verify_on_the_extracted_answers():
    """Our fast number path must agree with math-verify wherever both see the same answer."""
    golds = ["18", "1000", "0.5", "72", "3", "-4", "12.5", "100"]
    answers = [
        "18",
        "18.0",
        "1,000",
        "1000.00",
        "$1,000",
        "1/2",
        "0.5",
        "\\frac{1}{2}",
        "72",
        "72.000001",
        "3",
        "-3",
        "-4",
        "12.5",
        "12.50",
        "25/2",
        "100",
        "1e2",
        "99.9999999",
        "0",
        "1,50",
    ]
    for gold in golds:
        for answer in answers:
            ours = grade("gsm8k", f"Final answer: {answer}", gold)
            theirs = verify(parse(gold), parse(ours.answer)) if ours.answer is not None else False
            assert ours.correct == theirs, (gold, answer, ours)
