"""irpo_run.stages: `irpo run`'s stages each in a spawned process, with their logs, answers and
failures brought back. Real processes and signals; the stages here are small functions of this
module (the real ones run in tests/test_loop.py)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from irpo.card_loader import CardError
from irpo_run.stages import StageError, StageTraceback, run_stage

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# --- stages (run in the spawned process) ---


def answer_with_a_log(value: int, *, name: str) -> dict:
    logging.getLogger("irpo_data.build").info("nothing to do for %s", name)
    logging.getLogger("irpo_data.build").debug("below the level: not sent")
    return {"value": value * 2, "pid": os.getpid()}


def raise_card_error() -> None:
    raise CardError("cards/x.yaml", ["train.steps: unknown key", "seed: not an int"])


def raise_a_bug() -> None:
    {}["missing key in the stage"]


def die_by_sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_and_tell(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(120)


# --- tests ---


def test_a_stage_answers_from_another_process_and_its_logs_reach_this_ones(caplog):
    with caplog.at_level(logging.INFO):
        answer = run_stage("test_stages:answer_with_a_log", 21, name="iteration 1")
    assert answer["value"] == 42 and answer["pid"] != os.getpid()
    [record] = [r for r in caplog.records if r.name == "irpo_data.build"]
    assert record.getMessage() == "nothing to do for iteration 1" and record.levelno == logging.INFO


def test_a_users_error_comes_back_whole_and_a_bug_with_the_stages_traceback():
    with pytest.raises(CardError) as raised:
        run_stage("test_stages:raise_card_error")
    assert raised.value.problems == ["train.steps: unknown key", "seed: not an int"]
    with pytest.raises(KeyError) as raised:
        run_stage("test_stages:raise_a_bug")
    cause = raised.value.__cause__
    assert isinstance(cause, StageTraceback) and "raise_a_bug" in str(cause) and "test_stages.py" in str(cause)


def test_a_stage_killed_without_an_answer_is_a_clear_error():
    with pytest.raises(StageError, match=r"killed by SIGKILL .*out of memory.*run the same command again"):
        run_stage("test_stages:die_by_sigkill")


def _parent_running_a_sleeper(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """A Python process (as `irpo run` is) whose stage sleeps; (that process, the stage's pid)."""
    pid_file = tmp_path / "stage.pid"
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); from irpo_run.stages import run_stage; "
    code += f"run_stage('test_stages:sleep_and_tell', {str(pid_file)!r})"
    parent = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    return parent, int(pid_file.read_text())


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.time() + within_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie (dead, not yet reaped by its init) counts as gone.
        if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_sigkilled_run_leaves_no_stage_running(tmp_path):
    parent, stage = _parent_running_a_sleeper(tmp_path)
    parent.kill()
    parent.wait()
    assert _gone(stage, 10), "the stage outlived its SIGKILLed parent"


def test_ctrl_c_stops_the_stage_and_the_run(tmp_path):
    parent, stage = _parent_running_a_sleeper(tmp_path)
    os.killpg(parent.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, stderr = parent.communicate(timeout=60)
    assert parent.returncode != 0 and "KeyboardInterrupt" in stderr
    assert _gone(stage, 10)


# --- engines: none outlives the command that started it (irpo.reaper) ---


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, name) of every process, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            name, rest = stat[stat.index(b"(") + 1 : stat.rindex(b")")], stat[stat.rindex(b")") + 2 :].split()
            found[int(entry.name)] = (int(rest[1]), name.decode(errors="replace"))
    return found


def _engine_core_under(root: int, timeout_s: float) -> tuple[int, int]:
    """(engine core pid, its parent's pid) once vLLM's spawned engine core runs below `root`."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        procs = _processes()
        for pid, (parent, name) in procs.items():
            if name.startswith("VLLM::EngineCor"):
                ancestor = parent
                while ancestor not in (0, 1, root) and ancestor in procs:
                    ancestor = procs[ancestor][0]
                if ancestor == root:
                    return pid, parent
        time.sleep(0.2)
    raise AssertionError(f"no vLLM engine core started below pid {root} in {timeout_s} s")


@pytest.mark.slow  # two vLLM engine starts
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux's")
def test_no_engine_outlives_a_killed_run_or_a_killed_stage(tmp_path):
    """vLLM's engine core in a spawned process, as on a GPU (VLLM_ENABLE_V1_MULTIPROCESSING=1): SIGKILL
    `irpo run` while its build samples, then (a new run) SIGKILL only the build's stage process. Either
    way the engine core and its worker are gone once irpo run is, though nothing of irpo started them."""
    from conftest import require_vllm

    require_vllm()
    exe = str(Path(sys.executable).parent / "irpo")
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    tiny = ["--quiet", "task.max_questions=4", "sampling.num_samples=2", "sampling.max_new_tokens=16"]

    run = subprocess.Popen([exe, "run", "--runs-dir", str(tmp_path / "a"), *tiny], env=env, stderr=subprocess.PIPE)
    core, _ = _engine_core_under(run.pid, 300)
    engines = [pid for pid, (parent, _) in _processes().items() if parent == core] + [core]
    run.kill()
    run.wait()
    assert all(_gone(pid, 10) for pid in engines), "an engine process outlived its SIGKILLed irpo run"

    run = subprocess.Popen([exe, "run", "--runs-dir", str(tmp_path / "b"), *tiny], env=env, stderr=subprocess.PIPE)
    core, stage = _engine_core_under(run.pid, 300)
    os.kill(stage, signal.SIGKILL)  # the stage alone, as the out-of-memory killer would
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 1 and b"was killed by SIGKILL" in stderr, stderr[-2000:]
    assert _gone(core, 10), "the engine core outlived its stage and irpo run"
