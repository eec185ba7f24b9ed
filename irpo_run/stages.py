"""Each stage of `irpo run` in a fresh process of its own: one stage's memory is not the next one's.

    run_stage("irpo_train.train:train_iteration", card, 1, "runs", progress=True)
    -> what train_iteration(card, 1, "runs", progress=True) returns, run in a spawned process

Why: a process keeps what its stages imported and allocated (torch and vLLM's libraries, the
pieces of heap a model and its activations were freed in). With every stage in one process,
the demo's training started at 2.6 GB after iteration 1's build and at 3.6 GB in iteration 2,
against 1.8 GB in a fresh process, and `irpo run` peaked at 7.3 GB (BENCHMARKS.md, "Memory
between stages"). The run folder is the only state between stages, so a stage needs nothing
from the process of the one before; `irpo run` itself stays small (it never imports torch).

What crosses back, over one pipe:
- the stage's log records, handled by this process's loggers (the same lines at the same levels;
  pytest's caplog sees them); its progress bars and prints go to the same stderr and stdout;
- its return value, or its exception: an IrpoError is raised here as it was raised there (one
  line at the CLI's boundary); anything else is raised with the stage's traceback as its cause;
- a stage's process that dies without an answer (out of memory, killed) is a StageError that
  names the stage and the signal.
A stage's process dies with `irpo run` (hardware.die_with_parent), so a SIGKILLed run leaves
nothing training in the folder that the next run resumes. After Ctrl-C (which reaches both) the
stage has SIGINT_GRACE_S to stop on its own, then gets a SIGINT, then a SIGKILL: everything a
stage writes is written whole or not at all, so stopping it at any point loses only unfinished work.
Spawned, not forked: a fork would copy this process's threads, locks and memory.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback

from irpo.errors import IrpoError
from irpo.hardware import die_with_parent

SIGINT_GRACE_S = 5.0  # after Ctrl-C, how long the stage has to end on its own before it gets a SIGINT
KILL_GRACE_S = 30.0  # and after that SIGINT, before a SIGKILL
EXIT_GRACE_S = 120.0  # how long a stage that has answered may take to exit (its libraries' atexit work)


class StageError(IrpoError, RuntimeError):
    """A stage's process ended without an answer: killed (out of memory?) or crashed."""


class StageTraceback(Exception):
    """The traceback of an exception raised in a stage's process, as the cause of its copy here."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def run_stage(target: str, *args, **kwargs):
    """target(*args, **kwargs) in a fresh spawned process, `target` named "module:function"; its
    return value, or its exception raised here. Both must pickle (they are data: cards, paths)."""
    if threading.current_thread() is not threading.main_thread():
        # die_with_parent ties the stage to the thread that starts it: a worker thread's end would kill it.
        raise RuntimeError("run_stage must be called from the main thread")
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    level = logging.getLogger().getEffectiveLevel()
    stage = context.Process(
        target=_stage_main, args=(send, os.getpid(), level, target, args, kwargs), name=f"irpo {target}"
    )
    stage.start()
    send.close()  # the stage holds the only writing end: its end is an EOF here
    try:
        kind, payload = _answer(receive, stage, target)
    except KeyboardInterrupt:
        _stop(stage, receive)
        raise
    finally:
        receive.close()
    stage.join(EXIT_GRACE_S)
    if stage.is_alive():  # it answered, then hung on the way out (a library's thread): nothing is lost
        stage.kill()
        stage.join()
    if kind == "returned":
        return payload
    exc, text = payload
    if isinstance(exc, (IrpoError, KeyboardInterrupt)):  # said in one line at the CLI's boundary
        raise exc
    raise exc from StageTraceback(text)


def _answer(receive, stage, target: str):
    """Handle the stage's log records until its answer comes: ("returned", value) or ("raised", (exc, text))."""
    while True:
        try:
            kind, payload = receive.recv()
        except EOFError:
            stage.join()
            raise StageError(_died(stage, target)) from None
        if kind == "log":
            logging.getLogger(payload.name).handle(payload)
        else:
            return kind, payload


def _died(stage, target: str) -> str:
    code = stage.exitcode
    how = f"was killed by {signal.Signals(-code).name}" if code and code < 0 else f"exited with code {code}"
    hint = " (out of memory? `dmesg` says; a smaller train.batch_size or resources.kv_cache_gb needs less)"
    return (
        f"the process of stage {target} (pid {stage.pid}) {how} before it finished"
        f"{hint if code == -signal.SIGKILL else ''}; finished work is kept in the run folder: run the same command "
        "again to go on"
    )


def _stop(stage, receive) -> None:
    """After Ctrl-C here: let the stage end (it got the same SIGINT from the terminal), then make it."""
    deadline, signalled = time.monotonic() + SIGINT_GRACE_S, False
    while stage.is_alive():
        if time.monotonic() > deadline:
            if signalled:
                stage.kill()
                break
            os.kill(stage.pid, signal.SIGINT)
            deadline, signalled = time.monotonic() + KILL_GRACE_S, True
        try:  # keep reading: a stage blocked on a full pipe could not end
            if receive.poll(0.2):
                kind, payload = receive.recv()
                if kind == "log":
                    logging.getLogger(payload.name).handle(payload)
        except (EOFError, OSError):
            stage.join(0.2)
    stage.join()


# --- in the stage's process ------------------------------------------------------------------


class _PipeHandler(logging.Handler):
    """Sends each record, formatted and made picklable, to `irpo run`; also sends the answer, under
    the same lock so that no record is cut in two."""

    def __init__(self, send):
        super().__init__()
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send.send(("log", _portable_record(record)))
        except Exception:  # noqa: BLE001  (as logging does: a record that cannot be sent is dropped)
            self.handleError(record)

    def answer(self, message: tuple) -> None:
        with self.lock:
            self.send.send(message)


def _portable_record(record: logging.LogRecord) -> logging.LogRecord:
    """A copy with its message formatted (its args may not pickle) and its traceback as text."""
    copy = logging.makeLogRecord(record.__dict__)
    copy.msg, copy.args = record.getMessage(), None
    if record.exc_info:
        copy.exc_text = logging.Formatter().formatException(record.exc_info)
    copy.exc_info = None
    return copy


def _stage_main(send, parent_pid: int, level: int, target: str, args: tuple, kwargs: dict) -> None:
    die_with_parent(parent_pid)
    handler = _PipeHandler(send)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    try:
        module, name = target.split(":")
        message = ("returned", getattr(importlib.import_module(module), name)(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001  (every ending, Ctrl-C included, is told to irpo run)
        message = ("raised", _portable(exc))
    for stream in (sys.stdout, sys.stderr):  # its prints before irpo run's next ones
        stream.flush()
    handler.answer(message)


def _portable(exc: BaseException) -> tuple[BaseException, str]:
    """(the exception, or a copy that pickles with its type and message, its traceback text)."""
    text = "".join(traceback.format_exception(exc))
    try:
        copy = pickle.loads(pickle.dumps(exc))
        if type(copy) is type(exc) and str(copy) == str(exc):
            return exc, text
    except Exception:  # noqa: BLE001  (an exception whose fields do not pickle: its message still does)
        pass
    if isinstance(exc, (IrpoError, KeyboardInterrupt)):
        return (IrpoError(str(exc)) if isinstance(exc, IrpoError) else KeyboardInterrupt()), text
    return RuntimeError(f"{type(exc).__name__}: {exc}"), text
