"""Final-answer grading: the reward of the builder and the accuracy of the evaluator.

    grade(task, "... so 12 + 6 = 18.\\nFinal answer: $18.", "18")
    -> Grade(answer="18", correct=True, well_formed=True)

How an answer is found: the *last* answer phrase in the completion ("Final answer:", "The
answer is", "The final answer is", "####", or "\\boxed{...}") and what follows it on that line.
`well_formed` says the phrase is the one the task's prompt asked for; an answer after another
phrase is still graded (a model that writes "#### 18" when asked for "Final answer:" is right,
but its sample is dropped from pairs as off-format).

How it is compared: plain numbers ("18", "$1,000", "18.00") exactly, as decimals; anything else
(fractions, LaTeX, "x = 5") with math-verify's `parse`/`verify`; option labels by string.

Bounded on hostile output: only the phrase's line is read, capped at `MAX_ANSWER_CHARS`, and
a brace-nested answer deeper than `MAX_BRACE_DEPTH` is refused, so math-verify always gets a
small input. Its signal-based timeouts are off (they raise in threads and cancel the caller's
alarm), which is safe only because of these caps. Model text is parsed, never evaluated.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from math_verify import parse, verify

from irpo_data.tasks import Task, get_task

# math-verify logs the whole input on a parse failure (100 kB lines on hostile output).
logging.getLogger("math_verify").setLevel(logging.ERROR)

MAX_ANSWER_CHARS = 300  # longest answer span handed to math-verify
MAX_BRACE_DEPTH = 12  # deeper nesting is not an answer a benchmark expects

ANSWER_PHRASE = re.compile(r"final answer\s*(?:is)?\s*:?|the answer is\s*:?|####|\\boxed\s*\{", re.IGNORECASE)
PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
CHOICE_LABEL = re.compile(r"\(?([A-Z]|[1-9])\)?(?=$|[\s.,:;)])")
SENTENCE_END = re.compile(r"(?<=[^\s\d])\.\s|(?<=\d)\.\s+(?=[A-Z])|\.\s+(?=I hope)")
TRAILING_NOISE = re.compile(r"(?:\s*I hope it is correct\.?|\s*[.,;!]+)+\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Grade:
    answer: str | None  # normalised extracted answer; None when no answer was found
    correct: bool
    well_formed: bool  # stated with the answer phrase the prompt asked for


def grade(task: Task | str, completion: str, gold: str) -> Grade:
    """Grade one completion against the gold final answer of its question."""
    task = get_task(task) if isinstance(task, str) else task
    span, phrase = extract_span(completion)
    if span is None:
        return Grade(None, False, False)
    answer = normalise(task.answer_kind, span)
    if answer is None:
        return Grade(None, False, False)
    well_formed = re.search(task.answer_phrase, phrase, re.IGNORECASE) is not None
    return Grade(answer, is_equivalent(task.answer_kind, gold, answer), well_formed)


def extract_span(completion: str) -> tuple[str | None, str]:
    """The answer text after the last answer phrase, and that phrase; (None, "") if none."""
    last = None
    for last in ANSWER_PHRASE.finditer(completion):
        pass
    if last is None:
        return None, ""
    phrase = last.group(0)
    if phrase.lower().startswith("\\boxed"):
        span = _braced(completion, last.end())
    else:
        rest = completion[last.end() : last.end() + MAX_ANSWER_CHARS + 1]
        lines = [line for line in rest.split("\n") if line.strip()]
        span = lines[0] if lines else None
    if span is None or len(span) > MAX_ANSWER_CHARS:
        return None, phrase
    # The answer ends at its sentence: "18. Also 12+7 = 19" answers 18 ("1.5" has no space).
    span = TRAILING_NOISE.sub("", SENTENCE_END.split(span.strip(), maxsplit=1)[0])
    inner = re.fullmatch(r"\$+(.*?)\$+", span) or re.fullmatch(r"\\boxed\s*\{(.*)\}", span)
    if inner:
        span = inner.group(1).strip()
    return (span or None), phrase


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group opened just before `start`, or None if unbalanced/too deep."""
    depth = 1
    for i in range(start, min(len(text), start + MAX_ANSWER_CHARS + 1)):
        if text[i] == "{":
            depth += 1
            if depth > MAX_BRACE_DEPTH:
                return None
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def normalise(kind: str, span: str) -> str | None:
    """Canonical text of an answer span: "1,000.00" -> "1000", "(B)" -> "B"; None if unusable."""
    if kind == "choice":
        match = CHOICE_LABEL.match(span)
        return match.group(1) if match else None
    number = _plain_number(span)
    if number is not None:
        return _format_decimal(number)
    if _nesting_depth(span) > MAX_BRACE_DEPTH:
        return None
    parsed = _parse(span, kind == "latex")
    return parsed[-1] if parsed else None


def is_equivalent(kind: str, gold: str, answer: str) -> bool:
    """Whether `answer` (normalised) equals `gold`: exact for labels and numbers, math-verify otherwise."""
    if kind == "choice":
        return answer.strip().upper() == gold.strip().upper()
    gold_number, answer_number = _plain_number(gold), _plain_number(answer)
    if gold_number is not None and answer_number is not None:
        if gold_number == answer_number:
            return True
        # Clearly different numbers are decided here; near-equal ones (rounding) go to
        # math-verify so that our verdict is always the one math-verify would give.
        if abs(gold_number - answer_number) > Decimal("1e-4") * max(Decimal(1), abs(gold_number)):
            return False
    return _verify(gold, answer, kind == "latex")


def _plain_number(text: str) -> Decimal | None:
    text = text.strip().removeprefix("\\$").removeprefix("$").strip()
    if not PLAIN_NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def _format_decimal(number: Decimal) -> str:
    text = format(number.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _nesting_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif char == "}":
            depth -= 1
    return deepest


@lru_cache(maxsize=65536)
def _parse(text: str, latex: bool) -> tuple:
    # math-verify reads LaTeX ("\frac{1}{2}", "[2,5)", "x^2+1") only inside $...$; plain
    # text "x^2+1" would parse as 1. Spans reach here with their own $ already removed; an
    # escaped \$ is a currency sign (MATH: "\$1,\!657"), which carries no value and would
    # otherwise stop the wrapping.
    text = text.replace("\\$", "")
    wrapped = f"${text}$" if (latex or "\\" in text) and "$" not in text else text
    return tuple(parse(wrapped, parsing_timeout=None))


@lru_cache(maxsize=65536)
def _verify(gold: str, answer: str, latex: bool) -> bool:
    gold_parsed, answer_parsed = _parse(gold, latex), _parse(answer, latex)
    if not gold_parsed or not answer_parsed:
        return False
    return bool(verify(list(gold_parsed), list(answer_parsed), timeout_seconds=None))
