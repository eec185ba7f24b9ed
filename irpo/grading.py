"""Final-answer grading: the reward of the builder and the accuracy of the evaluator.

    grade(task, "... so 12 + 6 = 18.\\nFinal answer: $18.", "18")
    -> Grade(answer="18", correct=True, well_formed=True, timed_out=False)

Where the answer is found (extraction order, pinned by tests/test_grading.py):
1. Candidates: every answer phrase in the completion ("Final answer:", "The final answer is",
   "The answer is", "####", "\\boxed{"), and an answer label opening the *last* non-empty line
   ("Answer: 18", "A: 18", "**Answer:** 18", "answer: $18"; OpenAI's GSM8K solutions end "A: N").
2. The candidate that ends last wins: a model that corrects itself is graded on its correction.
3. Its span: the balanced group after "\\boxed{", else the first non-empty line after the
   phrase; cut at the end of its sentence ("18. Also 12+7 = 19" answers 18), trailing noise
   ("I hope it is correct.", punctuation, markdown `**`) and a wrapping `$...$` or `\\boxed{}`
   removed. No candidate, or a span over MAX_ANSWER_CHARS: no answer (wrong, not well formed).
`well_formed` says the winning phrase is the one the task's prompt asked for; `correct` is about
the value alone (a model that writes "#### 18" when asked for "Final answer:" is right, and its
sample is off-format).

How it is compared: option labels as strings; plain numbers ("18", "$1,000", "18.00") exactly,
as decimals, in this process; anything else (fractions, LaTeX, "x = 5") with math-verify's
`parse` / `verify`, run by `irpo.verifier` in a worker process under a deadline.

Always returns, within GRADE_TIMEOUT_S, wherever it runs (main thread, thread, worker process),
and raises nothing for any completion. An answer whose verification runs out of time, or that
would make sympy build an astronomically large number, is wrong with `timed_out=True`; the
builder and the evaluator count those as `grading_timeouts`. Model text is parsed, never
evaluated. `grade_many` grades a whole shard, its math-verify work spread over every core.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation

from irpo import verifier
from irpo.tasks import Task, get_task

log = logging.getLogger(__name__)

GRADE_TIMEOUT_S = 5.0  # wall-time bound of one grade() call; an answer not verified by then is wrong
KILL_MARGIN_S = 0.05  # of that bound, kept for killing an overrunning worker, so the call still ends in time
MAX_ANSWER_CHARS = 300  # longest answer span handed to math-verify
MAX_BRACE_DEPTH = 12  # deeper nesting is not an answer a benchmark expects
PARALLEL_MIN_ANSWERS = 64  # grade_many spreads math-verify over all cores from this many answers

# "Final answer: $\boxed{" is one phrase, so a boxed answer after the prompt's phrase is well formed.
ANSWER_PHRASE = re.compile(
    r"(?:final answer\s*:?\s*\$*\s*)?\\boxed\s*\{|final answer\s*(?:is)?\s*:?|the answer is\s*:?|####", re.IGNORECASE
)
# "Answer:", "A:", "**Answer:**", "> answer:" at the start of the last line (matched at its start).
LAST_LINE_LABEL = re.compile(r"[ \t>#*_]*(?:final\s+)?(?:answer|a)[ \t*_]*:[ \t*_]*", re.IGNORECASE)
PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
CHOICE_LABEL = re.compile(r"\(?([A-Z]|[1-9])\)?(?=$|[\s.,:;)])")
SENTENCE_END = re.compile(r"(?<=[^\s\d])\.\s|(?<=\d)\.\s+(?=[A-Z])|\.\s+(?=I hope)")
TRAILING_NOISE = re.compile(r"(?:\s*I hope it is correct\.?|\s*[.,;!]+)+\s*$", re.IGNORECASE)
# NUL and invisible format characters (right-to-left marks, zero-width spaces): no value in them.
INVISIBLE = re.compile("[\x00\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff]")


@dataclass(frozen=True)
class Grade:
    answer: str | None  # normalised extracted answer; None when no answer was found (or timed out)
    correct: bool
    well_formed: bool  # stated with the answer phrase the prompt asked for
    timed_out: bool = False  # verification ran out of time (or was refused as too expensive): wrong


def grade(task: Task | str, completion: str, gold: str) -> Grade:
    """Grade one completion against the gold final answer of its question, within GRADE_TIMEOUT_S."""
    task = get_task(task) if isinstance(task, str) else task
    return _grade_safely(task, completion if isinstance(completion, str) else "", None, str(gold))


def _grade_safely(task: Task, completion: str, extracted: tuple | None, gold: str) -> Grade:
    deadline = _deadline()
    try:
        return _grade(task, extracted or extract_span(completion), gold, deadline)
    except Exception as exc:  # a grader bug must not stop a build: the answer is wrong, and it says so
        log.warning("grading failed (%s: %s) on %.80r; counted wrong", type(exc).__name__, exc, completion)
        return Grade(None, False, False)


def _grade(task: Task, extracted: tuple[str | None, str], gold: str, deadline: float) -> Grade:
    span, phrase = extracted
    if span is None:
        return Grade(None, False, False)
    well_formed = re.search(task.answer_phrase, phrase, re.IGNORECASE) is not None
    answer = normalise(task.answer_kind, span, deadline)
    if verifier.is_timeout(answer):
        return Grade(None, False, well_formed, timed_out=True)
    if answer is None:
        return Grade(None, False, False)
    if not gold:  # a training question without gold (pairs.label vote or mixed): the answer is read, never judged
        return Grade(answer, False, well_formed)
    correct = _equivalent(task.answer_kind, gold, answer, deadline)
    if verifier.is_timeout(correct):
        return Grade(answer, False, well_formed, timed_out=True)
    return Grade(answer, correct, well_formed)


def grade_many(task: Task | str, completions: list[str], golds: list[str], workers: int | None = None) -> list[Grade]:
    """grade() of each (completion, gold), identical verdicts, with the math-verify work of the
    batch done first on `workers` processes at once (default: every core this process may use).

    Each answer keeps its own GRADE_TIMEOUT_S bound.
    """
    task = get_task(task) if isinstance(task, str) else task
    if len(completions) != len(golds):
        raise ValueError(
            f"grade_many got {len(completions)} completions and {len(golds)} golds; give one gold per completion"
        )
    kind, latex = task.answer_kind, task.answer_kind == "latex"
    golds = [str(g) for g in golds]
    completions = [c if isinstance(c, str) else "" for c in completions]
    extracted = [extract_span(c) for c in completions]
    workers = workers or _usable_cores()
    # Step 1: math-verify's reading of each span that is not a plain number or an option label.
    pending = {(s, latex) for s, _ in extracted if s is not None and _needs_parse(kind, s)} - _PARSED.keys()
    spent = _prefetch(_PARSED, "parse", sorted(pending), {}, workers)
    # Step 2: its verdict against the gold, for answers the number fast path cannot decide.
    needed: dict[tuple, float] = {}
    for (span, _), gold in zip(extracted, golds):
        if span is None or kind == "choice" or not gold:
            continue
        answer = normalise(kind, span, _deadline())
        if isinstance(answer, str) and _needs_verify(kind, gold, answer):
            budget = GRADE_TIMEOUT_S - KILL_MARGIN_S - spent.get((span, latex), 0.0)
            needed[(gold, answer, latex)] = min(needed.get((gold, answer, latex), budget), budget)
    _prefetch(_VERIFIED, "verify", sorted(needed.keys() - _VERIFIED.keys()), needed, workers)
    # Every verdict now comes from the caches.
    return [_grade_safely(task, c, item, gold) for c, item, gold in zip(completions, extracted, golds)]


def _prefetch(cache: dict, op: str, keys: list[tuple], budgets: dict[tuple, float], workers: int) -> dict[tuple, float]:
    """Fill `cache` with op's results for `keys` (refused ones without asking); seconds per key."""
    asked = []
    for key in keys:
        if any(verifier.too_expensive(text) for text in key[:-1]):
            cache[key] = verifier.TIMED_OUT
        else:
            asked.append(key)
    workers = workers if len(asked) >= PARALLEL_MIN_ANSWERS else 1
    timeouts = [max(0.0, budgets.get(key, GRADE_TIMEOUT_S - KILL_MARGIN_S)) for key in asked]
    results, seconds = verifier.call_many([(op, key) for key in asked], timeouts, workers)
    for key, result in zip(asked, results):
        _remember(cache, key, result)
    return dict(zip(asked, seconds))


def _deadline() -> float:
    """The time.monotonic() by which math-verify must have answered for a call starting now."""
    return time.monotonic() + GRADE_TIMEOUT_S - KILL_MARGIN_S


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def extract_span(completion: str) -> tuple[str | None, str]:
    """The answer text of the winning candidate, and its phrase; (None, "") if there is none."""
    last = None
    for match in ANSWER_PHRASE.finditer(completion):
        last = match
    stripped = completion.rstrip()
    label = LAST_LINE_LABEL.match(stripped, stripped.rfind("\n") + 1) if stripped else None
    if label is not None and (last is None or label.end() > last.end()):
        phrase, span = label.group(0), stripped[label.end() : label.end() + MAX_ANSWER_CHARS + 1].strip() or None
    elif last is not None:
        phrase = last.group(0)
        if phrase.endswith("{"):  # \boxed{
            span = _braced(completion, last.end())
        else:
            rest = completion[last.end() : last.end() + MAX_ANSWER_CHARS + 1]
            lines = [line for line in rest.split("\n") if line.strip()]
            span = lines[0] if lines else None
    else:
        return None, ""
    if span is None or len(span) > MAX_ANSWER_CHARS:
        return None, phrase
    # The answer ends at its sentence: "18. Also 12+7 = 19" answers 18 ("1.5" has no space).
    span = INVISIBLE.sub("", span).strip()
    span = TRAILING_NOISE.sub("", SENTENCE_END.split(span, maxsplit=1)[0])
    span = TRAILING_NOISE.sub("", span.strip("* \t"))  # markdown bold: "**18**"
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


def normalise(kind: str, span: str, deadline: float | None = None):
    """Canonical text of an answer span: "1,000.00" -> "1000", "(B)" -> "B"; None if unusable;
    verifier.TIMED_OUT if math-verify could not read it by `deadline` (default: GRADE_TIMEOUT_S from now)."""
    if kind == "choice":
        match = CHOICE_LABEL.match(span)
        return match.group(1) if match else None
    number = _plain_number(span)
    if number is not None:
        return _format_decimal(number)
    if _nesting_depth(span) > MAX_BRACE_DEPTH:
        return None
    return _ask(_PARSED, "parse", (span, kind == "latex"), deadline)


def is_equivalent(kind: str, gold: str, answer: str) -> bool:
    """Whether `answer` (normalised) equals `gold`: exact for labels and numbers, math-verify
    otherwise; False when math-verify cannot decide within GRADE_TIMEOUT_S."""
    return _equivalent(kind, gold, answer, _deadline()) is True


def _equivalent(kind: str, gold: str, answer: str, deadline: float):
    if kind == "choice":
        return answer.strip().upper() == gold.strip().upper()
    if not _needs_verify(kind, gold, answer):
        return _plain_number(gold) == _plain_number(answer)
    return _ask(_VERIFIED, "verify", (gold, answer, kind == "latex"), deadline)


def _needs_parse(kind: str, span: str) -> bool:
    return kind != "choice" and _plain_number(span) is None and _nesting_depth(span) <= MAX_BRACE_DEPTH


def _needs_verify(kind: str, gold: str, answer: str) -> bool:
    """False where plain numbers decide: equal, or clearly different. Near-equal ones (rounding)
    go to math-verify, so that our verdict is always the one math-verify would give."""
    gold_number, answer_number = _plain_number(gold), _plain_number(answer)
    if gold_number is None or answer_number is None:
        return True
    if gold_number == answer_number:
        return False
    return abs(gold_number - answer_number) <= Decimal("1e-4") * max(Decimal(1), abs(gold_number))


def _plain_number(text: str) -> Decimal | None:
    text = text.strip().removeprefix("\\$").removeprefix("$").strip()
    if not PLAIN_NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def _format_decimal(number: Decimal) -> str:
    # normalize() rounds to the context's precision (28 digits by default); an answer may have 300.
    text = format(number.normalize(Context(prec=MAX_ANSWER_CHARS + 10)), "f")
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


# math-verify results by their arguments, in this process: a gold parsed once per question, a
# shard prefetched by grade_many answered from here, and a timed-out answer the same every time.
_PARSED: dict[tuple, object] = {}
_VERIFIED: dict[tuple, object] = {}
CACHE_ENTRIES = 200_000  # per cache; cleared when full


def _ask(cache: dict, op: str, key: tuple, deadline: float | None):
    if key in cache:
        return cache[key]
    if any(verifier.too_expensive(text) for text in key[:-1]):
        result = verifier.TIMED_OUT
    else:
        result = verifier.call(op, key, deadline or _deadline())
    _remember(cache, key, result)
    return result


def _remember(cache: dict, key: tuple, result) -> None:
    if result is verifier.NOT_STARTED:  # nothing was computed: ask again next time
        return
    if len(cache) >= CACHE_ENTRIES:
        cache.clear()
    cache[key] = result
