"""math-verify with a hard deadline: every call answers in time, whatever the input.

    verifier.call("verify", ("\\frac{1}{2}", "0.5", True), deadline=time.monotonic() + 5)
    -> True            (or TIMED_OUT when the work did not finish before the deadline)

math-verify turns LaTeX into sympy, and sympy evaluates while it parses: `10^{10^{10^{10}}}` or
`(10^9)!` asks for a number with billions of digits, inside one C call that no signal, alarm or
thread can interrupt. Two layers keep grading bounded:
1. `too_expensive` (in this process, microseconds): numeric power towers, exponents and
   factorials whose value would have more than `MAX_DIGITS` digits are refused before sympy sees
   them, so a hostile answer costs nothing rather than the whole deadline;
2. a deadline: the math-verify work runs in worker processes (`python -m irpo.verifier`,
   one JSON line per request and per answer). A worker that overruns is killed (SIGKILL) and
   replaced by a fresh one on the next call. On Linux a worker also dies with its parent
   (PR_SET_PDEATHSIG): a SIGKILLed build or evaluation leaves no process spinning in sympy.

The answers travel on a pipe of their own, never on the worker's stdout (which is /dev/null: a
library's print, a sitecustomize or a dependency's warning would otherwise be read as a verdict and
shift every later one by one), and each answer line starts with the worker's own random token. A
line without it, or that is not JSON, is a broken worker, never a verdict: it is killed and the
request is sent again to a fresh one.

Workers are started lazily (~1 s each, once per process), kept idle between calls, one per
concurrent caller: threads each get their own, a forked child starts its own. Inside a worker
math-verify runs with its own timeouts off (they rely on signal.alarm); the deadline is ours.
Verdicts are math-verify's `parse` / `verify`, unchanged, wherever it answers in time.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import math
import os
import queue
import re
import secrets
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from irpo.hardware import die_with_parent

MAX_DIGITS = 1_000_000  # refuse numbers larger than this many digits (10^(10^6) still takes sympy ~0.1 s)


class _TimedOut:
    """No result: the work did not finish before its deadline, or was refused as too expensive."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


TIMED_OUT = _TimedOut("TIMED_OUT")  # the work overran (the worker was killed) or was refused
# The worker was still starting when the deadline came (a loaded machine): nothing was run, so
# unlike TIMED_OUT this says nothing about the input and is not worth remembering.
NOT_STARTED = _TimedOut("NOT_STARTED")


def is_timeout(result) -> bool:
    return isinstance(result, _TimedOut)


# --- the screen -----------------------------------------------------------------------------

_TOKEN = re.compile(r"\d+(?:\.\d+)?|\*\*|\\left\s*[(\[]|\\right\s*[)\]]|\\[a-zA-Z]+|\s+|.", re.DOTALL)
_OPEN, _CLOSE = {"{": "}", "(": ")", "[": "]"}, {"}", ")", "]"}


def too_expensive(text: str) -> bool:
    """Whether sympy would have to build a number of more than MAX_DIGITS digits from `text`.

    An upper bound on log10 of every numeric value: a number counts its own log10; a symbol 1;
    a group the sum over its terms (a product's bound); a^b is log10(a) * 10^log10(b) and n! is
    n * log10(n). `2^{2^{2}}` or `100!` pass; `10^{10^{10}}`, `9^{9^{9^{9}}}` and `(10^9)!` do not.
    """
    if "^" not in text and "!" not in text and "**" not in text:  # the common case: nothing can grow
        return False
    tokens = [t for t in _TOKEN.findall(text) if not t.isspace()]
    tokens = [
        "(" if t.startswith("\\left") else ")" if t.startswith("\\right") else "^" if t == "**" else t for t in tokens
    ]
    return _group_log10(tokens, 0, len(tokens)) > MAX_DIGITS


def _group_log10(tokens: list[str], start: int, end: int) -> float:
    """Bound on log10 of the terms tokens[start:end], summed (a product of them is no larger)."""
    total, i = 0.0, start
    while i < end:
        value, i = _power_log10(tokens, i, end)
        total += value
        if total > MAX_DIGITS:
            return math.inf
    return total


def _power_log10(tokens: list[str], i: int, end: int) -> tuple[float, int]:
    """Bound on log10 of an atom with its factorials and powers; a^b^c is a^(b^c), as in LaTeX."""
    value, i = _atom_log10(tokens, i, end)
    while i < end and tokens[i] == "!":
        n = 10.0**value if value < 300 else math.inf
        value, i = n * max(1.0, math.log10(n)), i + 1
    if i < end and tokens[i] == "^":
        exponent, i = _power_log10(tokens, i + 1, end)
        value = value * 10.0**exponent if exponent < 300 else math.inf
    return value, i


def _atom_log10(tokens: list[str], i: int, end: int) -> tuple[float, int]:
    """(bound on log10 of the atom at tokens[i], index after it): a number, a group, or a symbol."""
    if i >= end:
        return 0.0, i
    token = tokens[i]
    if token in _OPEN:
        depth, j = 1, i + 1
        while j < end and depth:
            depth += tokens[j] in _OPEN
            depth -= tokens[j] in _CLOSE
            j += 1
        return _group_log10(tokens, i + 1, j - 1 if depth == 0 else j), j
    if token[0].isdigit():
        whole = token.split(".")[0]
        return (math.log10(max(1, int(whole))) if len(whole) < 300 else float(len(whole))), i + 1
    return 1.0, i + 1  # a symbol, a command or punctuation: treated as a small number


# --- the worker side (runs in `python -m irpo.verifier`) -------------------------------


def parse_answer(text: str, latex: bool) -> str | None:
    """math-verify's reading of one answer span: the normalised text it extracted, or None."""
    parsed = _parse(text, latex)
    return str(parsed[-1]) if parsed else None


def verify_answers(gold: str, answer: str, latex: bool) -> bool:
    """math-verify's verdict on `answer` against `gold` (parse both, then verify)."""
    from math_verify import verify

    gold_parsed, answer_parsed = _parse(gold, latex), _parse(answer, latex)
    if not gold_parsed or not answer_parsed:
        return False
    return bool(verify(list(gold_parsed), list(answer_parsed), timeout_seconds=None))


@functools.lru_cache(maxsize=65536)  # a question's gold is parsed once, not once per sample
def _parse(text: str, latex: bool) -> tuple:
    from math_verify import parse

    # math-verify reads LaTeX ("\frac{1}{2}", "[2,5)", "x^2+1") only inside $...$; plain
    # text "x^2+1" would parse as 1. Spans reach here with their own $ already removed; an
    # escaped \$ is a currency sign (MATH: "\$1,\!657"), which carries no value and would
    # otherwise stop the wrapping.
    text = text.replace("\\$", "")
    wrapped = f"${text}$" if (latex or "\\" in text) and "$" not in text else text
    return tuple(parse(wrapped, parsing_timeout=None))


OPERATIONS = {"parse": parse_answer, "verify": verify_answers}


def serve(parent_pid: int, reply_fd: int, token: str) -> None:
    """The worker loop: one JSON request per line on stdin, one answer per line on `reply_fd`
    ("<token> <JSON>"); its stdout is /dev/null, so nothing else reaches the answers."""
    die_with_parent(parent_pid)

    out = os.fdopen(reply_fd, "w", encoding="utf-8")
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs whole hostile inputs
    verify_answers("\\frac{1}{2}", "0.5", True)  # before "ready": math-verify's lazy imports (~1 s) happen here
    out.write(f'{token} "ready"\n')
    out.flush()
    for line in sys.stdin:
        op, args = json.loads(line)
        try:
            result = OPERATIONS[op](*args)
        except Exception:  # math-verify on garbage: no verdict is a wrong answer, never a crash
            result = None if op == "parse" else False
        out.write(f"{token} {json.dumps(result)}\n")
        out.flush()


# --- the parent side ------------------------------------------------------------------------


class _Broken(Exception):
    """A worker answered with a line that is not an answer (no token, not JSON)."""


class _Worker:
    """One worker process and its pipes; `request` answers by a deadline or kills it."""

    def __init__(self):
        self.proc, self.replies, self.token = _spawn()
        self.ready = False
        self.buffer = b""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, op: str, args: tuple, deadline: float):
        """The answer, TIMED_OUT / NOT_STARTED, or _Broken (the worker is killed) for a line that is none."""
        if not self.ready:
            line = self._read_line(deadline)
            if line is None:
                # Still starting (a loaded machine): this call gets no verdict, but the worker is
                # kept, since nothing it runs has overrun.
                return NOT_STARTED if self.alive else TIMED_OUT
            if self._answer(line) != "ready":
                return self._broken(line)
            self.ready = True
        try:
            os.write(self.proc.stdin.fileno(), (json.dumps([op, list(args)]) + "\n").encode())
        except OSError:  # it died (killed from outside): no verdict from it
            self.kill()
            return TIMED_OUT
        line = self._read_line(deadline)
        if line is None:
            self.kill()
            return TIMED_OUT
        answer = self._answer(line)
        return self._broken(line) if answer is _BROKEN else answer

    def _answer(self, line: bytes):
        prefix = self.token.encode() + b" "
        if not line.startswith(prefix):
            return _BROKEN
        try:
            return json.loads(line[len(prefix) :])
        except ValueError:
            return _BROKEN

    def _broken(self, line: bytes) -> _Broken:
        self.kill()
        return _Broken(line[:200])

    def _read_line(self, deadline: float) -> bytes | None:
        fd = self.replies
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # EOF: the worker died
                self.kill()
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        if self.replies >= 0:
            os.close(self.replies)
            self.replies = -1


_BROKEN = object()


_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # so the worker imports this same irpo
_WORKER_CODE = (
    f"import sys; sys.path.insert(0, {_PACKAGE_ROOT!r}); from irpo.verifier import serve; "
    "serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])"
)


def _popen() -> tuple[subprocess.Popen, int, str]:
    """(the worker, the read end of its answer pipe, its token)."""
    replies, answers = os.pipe()
    token = secrets.token_hex(8)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, str(os.getpid()), str(answers), token],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,  # what library code prints goes nowhere, least of all into the answers
            stderr=subprocess.DEVNULL,
            pass_fds=(answers,),
            # Its own session: a Ctrl-C meant for the build does not kill a worker mid-answer.
            start_new_session=True,
        )
    except BaseException:
        os.close(replies)
        raise
    finally:
        os.close(answers)  # the worker holds the only writing end: its death is an EOF here
    return proc, replies, token


class _Spawner:
    """Starts workers from one long-lived thread of this process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the worker ends, not the process: a
    worker started from a thread pool's thread would die with that thread. This thread lives as
    long as the process, so workers die exactly when their parent does.
    """

    def __init__(self):
        self.requests: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, name="irpo-verifier-spawner", daemon=True).start()

    def _serve(self) -> None:
        while True:
            reply: queue.Queue = self.requests.get()
            try:
                reply.put(_popen())
            except BaseException as exc:  # noqa: BLE001  (handed to the caller, raised there)
                reply.put(exc)

    def spawn(self) -> tuple[subprocess.Popen, int, str]:
        reply: queue.Queue = queue.Queue()
        self.requests.put(reply)
        result = reply.get()
        if isinstance(result, BaseException):
            raise result
        return result


_lock = threading.Lock()
_idle: list[_Worker] = []
_spawner: _Spawner | None = None


def _spawn() -> tuple[subprocess.Popen, int, str]:
    global _spawner
    with _lock:
        if _spawner is None:
            _spawner = _Spawner()
        spawner = _spawner
    return spawner.spawn()


def _checkout() -> _Worker:
    with _lock:
        while _idle:
            worker = _idle.pop()
            if worker.alive:
                return worker
    return _Worker()


def _checkin(worker: _Worker) -> None:
    if worker.alive:
        with _lock:
            _idle.append(worker)


def _forget_parents_workers() -> None:
    """In a forked child: the workers and the spawner thread belong to the parent; start afresh."""
    global _lock, _idle, _spawner
    _lock, _idle, _spawner = threading.Lock(), [], None


def close_workers() -> None:
    """Stop this process's idle workers (at exit, and for timings that need fresh ones)."""
    with _lock:
        workers = list(_idle)
        _idle.clear()
    for worker in workers:
        worker.kill()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents_workers)
atexit.register(close_workers)


def call(op: str, args: tuple, deadline: float):
    """Run math-verify operation `op` ("parse" or "verify") on `args` in a worker, by `deadline`
    (a time.monotonic() value); TIMED_OUT if it cannot answer in time."""
    if time.monotonic() >= deadline:
        return TIMED_OUT
    worker = _checkout()
    try:
        result = worker.request(op, args, deadline)
        if isinstance(result, _Broken):  # never a verdict: a fresh worker answers it
            worker = _Worker()
            result = worker.request(op, args, deadline)
        return TIMED_OUT if isinstance(result, _Broken) else result
    finally:
        _checkin(worker)


def call_many(requests: list[tuple[str, tuple]], timeouts_s: list[float], workers: int) -> tuple[list, list[float]]:
    """(results, seconds each took) of many requests, spread over `workers` worker processes.

    Request i has timeouts_s[i] from the moment it is sent; its result is what `call` would
    give it with that deadline.
    """
    if not requests:
        return [], []
    results: list = [None] * len(requests)
    seconds: list[float] = [0.0] * len(requests)
    cursor = iter(range(len(requests)))
    cursor_lock = threading.Lock()

    def drain() -> None:
        worker = _checkout()
        try:
            while True:
                with cursor_lock:
                    index = next(cursor, None)
                if index is None:
                    return
                if not worker.alive:  # killed on an overrun: a fresh one for the next request
                    worker = _Worker()
                op, args = requests[index]
                start = time.monotonic()
                result = worker.request(op, args, start + timeouts_s[index])
                if isinstance(result, _Broken):  # never a verdict: a fresh worker answers it
                    worker = _Worker()
                    result = worker.request(op, args, start + timeouts_s[index])
                results[index] = TIMED_OUT if isinstance(result, _Broken) else result
                seconds[index] = time.monotonic() - start
        finally:
            _checkin(worker)

    count = max(1, min(workers, len(requests)))
    if count == 1:
        drain()
    else:
        with ThreadPoolExecutor(count, thread_name_prefix="irpo-grading") as pool:
            for future in [pool.submit(drain) for _ in range(count)]:
                future.result()
    return results, seconds


def start_workers(count: int) -> None:
    """Have `count` idle workers ready (started in parallel), so a timing that follows excludes start-up."""
    workers = [_checkout() for _ in range(count)]
    for worker in workers:
        if not worker.ready:
            line = worker._read_line(time.monotonic() + 60)
            if line is not None and worker._answer(line) == "ready":
                worker.ready = True
            elif line is not None:
                worker._broken(line)
        _checkin(worker)


def worker_pids() -> list[int]:
    """Process ids of this process's idle workers (for tests and for `ps`)."""
    with _lock:
        return [w.proc.pid for w in _idle if w.alive]


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
