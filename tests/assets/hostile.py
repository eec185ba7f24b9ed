"""Hostile model answers: each one hung, crashed or slowed the grader of an earlier version.

Used by tests/test_grading_bounds.py (every one graded within the bound, in every kind of caller,
none correct) and bench/bench_grading.py (the worst case per answer). Built here rather than
stored: several are 100 kB of one character.
"""

CELLS = " & ".join(["1"] * 100)
HOSTILE = {
    "power tower": "The answer is $10^{10^{10^{10}}}$.",
    "boxed power tower": "Final answer: $\\boxed{9^{9^{9^{9}}}}$",
    "symbol to a tower": "The final answer is $x^{10^{10^{10}}}$",
    "huge exponent": "The answer is $2^{10^{8}}$.",
    "factorial of a power": "The answer is $(10^{9})!$.",
    "factorial of a big number": "The final answer is $\\left(10^{7}\\right)!$",
    "frac nested 500 deep": "Final answer: $" + "\\frac{1}{" * 500 + "2" + "}" * 500 + "$",
    "100 kB of digits": "Final answer: " + "9" * 100_000,
    "100 kB of braces": "Final answer: " + "{" * 50_000 + "}" * 50_000,
    "100 kB of dollars": "Final answer: " + "$" * 100_000,
    "unclosed boxed": "so the result is \\boxed{" + "x+" * 1000,
    "NUL bytes": "Final answer: 1\x00" + "\x00" * 1000,
    "lone surrogates": "Final answer: \ud800\udfff\ud83d 18",
    "right-to-left marks": "Final answer: \u202e81\u202c",
    "20,000-cell matrix": "The answer is $\\begin{pmatrix}" + " \\\\ ".join([CELLS] * 200) + "\\end{pmatrix}$",
    "boxed 20,000-cell matrix": "\\boxed{\\begin{pmatrix}" + " \\\\ ".join([CELLS] * 200) + "\\end{pmatrix}}",
    "python power tower": "The answer is 10**10**10**10",
}
