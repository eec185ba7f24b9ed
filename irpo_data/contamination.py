"""Training questions that repeat a test question: a 13-gram overlap check.

    flagged = overlapping_questions(train_questions, test_questions)   # ["train/algebra/517.json", ...]

Words are lower-cased runs of letters and digits (LaTeX markup splits off, so "$x^2$" is "x 2"),
and Asymptote drawings ([asy]...[/asy]) are left out: they are shared plotting code, not the
question. A training question is flagged when at least `MIN_SHARE` of its 13-word n-grams occur in
some test question. One shared n-gram is not enough: templates ("where m and n are relatively
prime positive integers. Find m+n") and "express your answer as a common fraction" phrasing
would flag 632 of MATH's 7,494 paper-split training problems. Questions under 13 words are never
flagged.

What it finds (../shared/data): PRM800K's MATH training split, 3,979 of its 11,994 problems (it
holds 4,500 of the original test problems); the paper's 7,500 / 5,000 split, 52 (MATH itself
repeats some problems across its train and test sets, e.g. train/algebra/517 = test/algebra/636).
The builder counts them in every iteration (dataset card, manifest, iter_t/contaminated.txt with
the ids); `task.drop_contaminated` removes them before sampling.
"""

from __future__ import annotations

import re

from irpo.tasks import Question

NGRAM_WORDS = 13
MIN_SHARE = 0.8  # of a question's n-grams found in the test set: most of the question, not a phrase
_WORD = re.compile(r"[a-z0-9]+")
_ASY = re.compile(r"\[asy\].*?\[/asy\]", re.DOTALL | re.IGNORECASE)


def _ngrams(text: str, n: int) -> set[str]:
    words = _WORD.findall(_ASY.sub(" ", text).lower())
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def overlapping_questions(train: list[Question], test: list[Question], n: int = NGRAM_WORDS) -> list[str]:
    """Ids of the `train` questions most of whose n-grams of words occur in `test` questions, in order."""
    seen: set[str] = set()
    for question in test:
        seen |= _ngrams(question.text, n)
    flagged = []
    for question in train:
        grams = _ngrams(question.text, n)
        if grams and len(grams & seen) >= MIN_SHARE * len(grams):
            flagged.append(question.question_id)
    return flagged
