"""No engine outlives its command: a watchdog that kills what a command started once the command is gone.

    start_reaper()   # once, at the start of `irpo run` and of each stage command

Why: vLLM on a GPU runs its engine core in a spawned child process (vLLM v1; on a CPU irpo keeps it
in-process), and lm-eval's vLLM does the same. When the command that started it is killed (SIGKILL,
the out-of-memory killer, a cluster's time limit), that child is orphaned and keeps the GPU memory
the resumed run needs. `die_with_parent` covers the processes irpo starts itself (stages, grading
workers); the reaper covers the ones libraries start.

The reaper is a small separate process (its own session, so no Ctrl-C or process-group kill meant
for the command reaches it). Twice a second it notes every descendant of the command (pid and start
time, from a scan of /proc/*/stat); when the command has ended, by any means, it SIGKILLs every one of them still
running, and their descendants, then exits. The start time guards against a reused pid. Linux only
(elsewhere it does nothing). A descendant started less than half a second before the command died
can be missed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

POLL_S = 0.5
_started: int | None = None  # the pid this process started a reaper for


def start_reaper() -> None:
    """Watch this process: once it has ended, kill whatever it started that is still running."""
    global _started
    if _started == os.getpid() or not Path("/proc/self/stat").is_file():
        return
    subprocess.Popen(
        [sys.executable, "-S", "-c", _CODE, str(os.getpid()), str(POLL_S)],  # -S: no site, ~10 MB, 20 ms
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _started = os.getpid()


# The watchdog's own code: standard library only, no import of irpo (its start must cost nothing).
_CODE = r"""
import os, signal, sys, time

watched, poll = int(sys.argv[1]), float(sys.argv[2])
me = os.getpid()

def table():
    # pid -> (parent pid, start time) of every process; /proc/PID/stat's fields after the command's ")"
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                procs[int(name)] = (int(fields[1]), fields[19])
            except (OSError, IndexError, ValueError):
                pass
    return procs

def descendants(roots, procs):
    below = {}
    for pid, (parent, _) in procs.items():
        below.setdefault(parent, []).append(pid)
    found, todo = {}, list(roots)
    while todo:
        pid = todo.pop()
        for child in below.get(pid, []):
            if child != me and child not in found:
                found[child] = procs[child][1]
                todo.append(child)
    return found

known = {}
while os.getppid() == watched:
    procs = table()
    known = {pid: start for pid, start in known.items() if procs.get(pid, (0, None))[1] == start}
    known.update(descendants([watched], procs))
    time.sleep(poll)
procs = table()
known.update(descendants(list(known), procs))  # what the orphans started since
for pid, start in known.items():
    if procs.get(pid, (0, None))[1] == start:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""
