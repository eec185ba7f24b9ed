"""Grading always returns: hostile answers in every kind of caller, the deadline, the worker processes.

Real math-verify and real sympy throughout. The hostile answers are the ones that hung the old
grader forever (power towers, factorials of huge numbers) and the garbage a model can emit.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from assets.hostile import HOSTILE
from conftest import ASSETS

from irpo import grading, verifier
from irpo.grading import Grade, grade, grade_many
from irpo.prompts import Generation
from irpo.tasks import get_task
from irpo_data.sampling import SAMPLE_SCHEMA, write_shard


def _grade_hostile(_=None) -> list[tuple[str, float, Grade]]:
    """(name, seconds, grade) of every hostile answer, graded where this function runs."""
    out = []
    for name, text in HOSTILE.items():
        start = time.monotonic()
        result = grade("math", text, "1")
        out.append((name, time.monotonic() - start, result))
    return out


def _check(results) -> None:
    slow = [(name, round(s, 2)) for name, s, _ in results if s > grading.GRADE_TIMEOUT_S]
    assert not slow, f"over the {grading.GRADE_TIMEOUT_S} s bound: {slow}"
    assert not [name for name, _, g in results if g.correct], "a hostile answer graded correct"


def test_hostile_answers_return_within_the_bound_in_the_main_thread():
    _check(_grade_hostile())


def test_hostile_answers_return_within_the_bound_in_a_thread():
    # math-verify's own timeouts (signal.alarm) raise ValueError in a thread; ours do not use them.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        _check(pool.submit(_grade_hostile).result(timeout=120))


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_hostile_answers_return_within_the_bound_in_worker_processes(start_method):
    with multiprocessing.get_context(start_method).Pool(2) as pool:
        for results in pool.map(_grade_hostile, range(2), chunksize=1):
            _check(results)


def test_a_power_tower_that_passes_the_screen_is_stopped_at_the_deadline(monkeypatch):
    """The last resort alone: with the screen switched off, sympy really starts computing
    10^(10^(10^10)); the worker is killed at the deadline and the next answer is graded as usual."""
    monkeypatch.setattr(verifier, "too_expensive", lambda text: False)
    monkeypatch.setattr(grading, "GRADE_TIMEOUT_S", 1.5)
    grading._PARSED.clear(), grading._VERIFIED.clear()
    assert grade("math", "Final answer: $\\frac{1}{2}$", "0.5").correct  # a warm worker
    for text in ("The answer is $10^{10^{10^{10}}}$.", "The answer is $(10^{9})!$."):
        start = time.monotonic()
        result = grade("math", text, "\\frac{3}{7}")
        seconds = time.monotonic() - start
        assert result.timed_out and not result.correct, result
        assert seconds < 1.5, f"{text}: {seconds:.2f} s"
    assert grade("math", "Final answer: $\\frac{6}{14}$", "\\frac{3}{7}") == Grade("\\frac{6}{14}", True, True)


def test_a_timed_out_answer_is_graded_the_same_every_time(monkeypatch):
    monkeypatch.setattr(verifier, "too_expensive", lambda text: False)
    monkeypatch.setattr(grading, "GRADE_TIMEOUT_S", 1.0)
    text = "The answer is $9^{9^{9^{9}}}$."
    first = grade("math", text, "2")
    start = time.monotonic()
    assert grade("math", text, "2") == first and first.timed_out
    assert time.monotonic() - start < 0.1  # remembered, not recomputed


@pytest.mark.parametrize(
    "text,refused",
    [
        ("10^{10^{10}}", True),
        ("9^{9^{9^{9}}}", True),
        ("(10^{9})!", True),
        ("(10^6)!", True),
        ("x^{10^{10^{10}}}", True),
        ("2^{10^{8}}", True),
        ("10**10**10", True),
        ("2^{2^{2}}", False),
        ("100000!", False),
        ("2^{100000}", False),
        ("10^{10^{6}}", False),
        ("x^2+1", False),
        ("\\frac{1}{2}", False),
        ("[2,5)", False),
        ("e^{i\\pi}", False),
        ("5!", False),
    ],
)
def test_the_screen_refuses_only_astronomically_large_numbers(text, refused):
    assert verifier.too_expensive(text) is refused


def _worker_state(pid: int) -> str:
    """A process's state letter (R, S, Z...), or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_stuck_in_sympy_dies_with_its_parent():
    """The parent is SIGKILLed while its worker computes 10^(10^(10^10)) (screen off, no deadline
    to speak of): the worker must not keep a core busy after it."""
    code = (
        "from irpo import grading, verifier\n"
        "verifier.too_expensive = lambda text: False\n"
        "grading.GRADE_TIMEOUT_S = 600\n"
        "grading.grade('math', 'Final answer: $\\\\frac{1}{2}$', '0.5')\n"
        "print(verifier.worker_pids()[0], flush=True)\n"
        "grading.grade('math', 'The answer is $10^{10^{10^{10}}}$.', '1')\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        worker = int(parent.stdout.readline())
        time.sleep(1.0)
        assert _worker_state(worker) == "R"  # computing
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 5
    while _worker_state(worker) not in ("", "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _worker_state(worker) in ("", "Z"), f"worker {worker} outlived its parent"


def _math_cases(limit: int = 400) -> tuple[list[str], list[str]]:
    """MATH solutions of the test asset, each against its own gold (right) and the next one's (mostly wrong)."""
    rows = [json.loads(line) for line in (ASSETS / "math" / "train.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["answer"]]
    texts, golds = [], []
    for i, row in enumerate(rows):
        for gold in (row["answer"], rows[(i + 1) % len(rows)]["answer"]):
            texts.append(row["solution"])
            golds.append(gold)
    return texts[:limit], golds[:limit]


def test_grade_many_on_two_processes_gives_the_verdicts_of_grade():
    texts, golds = _math_cases()
    grading._PARSED.clear(), grading._VERIFIED.clear()
    pooled = grade_many("math", texts + list(HOSTILE.values()), golds + ["1"] * len(HOSTILE), workers=2)
    grading._PARSED.clear(), grading._VERIFIED.clear()
    one_by_one = [grade("math", t, g) for t, g in zip(texts + list(HOSTILE.values()), golds + ["1"] * len(HOSTILE))]
    assert pooled == one_by_one
    correct = [g.correct for g in pooled[: len(texts)]]
    assert sum(correct[0::2]) == len(correct[0::2])  # every solution is right against its own gold
    assert not any(correct[1::2][:-1]) or sum(correct[1::2]) <= 2  # and (almost) never against the next


def test_grade_many_verdicts_equal_math_verify_in_this_process():
    from math_verify import parse, verify

    texts, golds = _math_cases(120)
    results = grade_many("math", texts, golds, workers=2)
    for gold, result in zip(golds, results):
        if result.answer is None:
            continue
        wrap = lambda t: t if "$" in t else f"${t}$"  # noqa: E731  (as the verifier wraps LaTeX)
        theirs = verify(
            parse(wrap(gold), parsing_timeout=None),
            parse(wrap(result.answer), parsing_timeout=None),
            timeout_seconds=None,
        )
        assert result.correct == theirs, (gold, result)


def test_grading_in_datasets_map_with_two_processes():
    """datasets.map(num_proc=2) forks: each child starts its own workers and grades the same."""
    import datasets

    texts, golds = _math_cases(40)
    ds = datasets.Dataset.from_dict({"completion": texts, "gold": golds})
    graded = ds.map(lambda row: {"correct": grade("math", row["completion"], row["gold"]).correct}, num_proc=2)
    assert graded["correct"] == [grade("math", t, g).correct for t, g in zip(texts, golds)]


def test_a_shard_with_hostile_generations_is_graded_and_written(tmp_path):
    """The grading step after the engine, fed the hostile answers as an engine's output."""
    task = get_task("math")
    question = task.load("train", str(ASSETS / "math")).questions[0]
    outputs = [[Generation(text, 50, "stop") for text in HOSTILE.values()]]
    start = time.monotonic()
    write_shard(task, [question], ["PROMPT"], outputs, tmp_path / "part-00000.parquet")
    assert time.monotonic() - start < grading.GRADE_TIMEOUT_S * 2
    shard = pl.read_parquet(tmp_path / "part-00000.parquet")
    assert shard.schema == pl.Schema(SAMPLE_SCHEMA) and shard.height == len(HOSTILE)
    assert not shard["correct"].any()
    assert shard["grading_timed_out"].sum() >= 5  # the towers and factorials, refused by the screen
    assert "\ufffd" in shard["completion"][list(HOSTILE).index("lone surrogates")]  # UTF-8 can hold no lone surrogate


# Graded by math-verify in the workers (none is a plain number), right and wrong answers mixed: a
# verdict shifted by one line would turn at least one of them around.
CHANNEL_TABLE = [
    ("Final answer: $\\frac{1}{2}$", "0.5", True),
    ("Final answer: $\\frac{2}{3}$", "0.5", False),
    ("Final answer: $x^2+1$", "1+x^2", True),
    ("Final answer: $\\sqrt{2}$", "\\sqrt{3}", False),
    ("Final answer: $[2,5)$", "[2,5)", True),
    ("Final answer: $\\frac{3}{4}$", "0.75", True),
    ("Final answer: $x^3$", "x^2", False),
]
NOISY_SITECUSTOMIZE = """
import os, sys, threading, time
print('"ready"')                       # what the old worker's first line was taken to be, unread
print(1); print('true'); sys.stdout.flush()
def noise():
    while True:
        print('false', flush=True)     # a verdict-shaped line, all the time, while the worker works
        os.write(1, b'true\\n')
        time.sleep(0.001)
threading.Thread(target=noise, daemon=True).start()
# Once (the first worker only): write garbage on the answer pipe itself, whose number is argv[2].
flag = os.environ.get("IRPO_TEST_BREAK_ONCE")
if flag and not os.path.exists(flag) and len(sys.argv) > 3:
    open(flag, "w").close()
    os.write(int(sys.argv[2]), b'true\\n')
"""


@pytest.mark.slow  # worker processes with a noisy interpreter
def test_a_worker_whose_interpreter_prints_still_grades_a_known_table_right(tmp_path, monkeypatch):
    """A sitecustomize that prints at start and all through the work, and once writes a bare `true`
    on the answer pipe itself: the verdicts are math-verify's, one per answer, in order; the worker
    that wrote a line without its token was replaced, not believed."""
    (tmp_path / "sitecustomize.py").write_text(NOISY_SITECUSTOMIZE)
    flag = tmp_path / "broken-once"
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("IRPO_TEST_BREAK_ONCE", str(flag))
    verifier.close_workers()  # fresh workers, started with the noisy interpreter
    try:
        task = get_task("math")
        one_by_one = [grade(task, text, gold).correct for text, gold, _ in CHANNEL_TABLE]
        many = [
            g.correct for g in grade_many(task, [t for t, _, _ in CHANNEL_TABLE], [g for _, g, _ in CHANNEL_TABLE], 2)
        ]
        assert flag.exists()  # the first worker did write on the answer pipe
    finally:
        verifier.close_workers()
    expected = [want for _, _, want in CHANNEL_TABLE]
    assert one_by_one == expected and many == expected
