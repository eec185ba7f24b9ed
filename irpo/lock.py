"""One command per run folder: the lock that `irpo run` and every stage command take on runs/NAME.

    with run_lock(Path("runs/demo"), "irpo run"):
        ...   # a second command on runs/demo stops at once, naming this one

Two commands writing one run folder destroy each other's work (a second build deleted the first
one's shard in flight; two trainers shared and deleted M_t.work), so the top process of a command
holds runs/.NAME.lock (beside the folder, so that it stays put when the folder is set aside):
- on one machine, an flock on that file: the kernel releases it when its holder dies, however it dies;
- across machines (run folders on shared storage, where a pid cannot be checked from another node), a
  lease: the file names the holder (pid, host, command, since) and a heartbeat it renews every
  HEARTBEAT_S; a holder on another host that has not renewed it for LEASE_S is taken to be gone.
A lock whose holder is gone is taken over with a warning.

The holder's own helpers work under it: it exports IRPO_RUN_LOCK=<lock file>:<token>, which the stage
processes of `irpo run` and anything they start inherit; a command that finds its own token in the
lock goes on without taking it. Ranks other than 0 of a torchrun / accelerate launch never take it
(rank 0 does, and a launch whose rank 0 stops is stopped by the launcher); Ray's actors write only
through the build that holds it.

What it relies on (README, "What irpo promises"): flock on a local file system, and on a network or
cluster file system that supports it (NFS v4 does; Lustre only when mounted with `-o flock`);
where flock is missing, the lease alone, so two commands started within a moment of each other on
two machines could still both go on. Clocks of the machines that share a run folder must agree to
within a few seconds.
"""

from __future__ import annotations

import _thread
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from irpo.errors import IrpoError

log = logging.getLogger(__name__)

LOCK_ENV = "IRPO_RUN_LOCK"
HEARTBEAT_S = 15.0
LEASE_S = 120.0  # a holder on another host silent for this long is gone
RECORD_BYTES = 2048  # the lock file's content is written in place, padded to this size


class RunLockedError(IrpoError, RuntimeError):
    """Another command holds the run folder."""


def lock_file(run_root: Path) -> Path:
    return run_root.parent / f".{run_root.name}.lock"


def _holder(path: Path) -> dict | None:
    """The lock file's record, or None if it has none (never locked, or released). Read a few times:
    a holder renewing its heartbeat may be between truncating and writing."""
    for _ in range(5):
        try:
            text = path.read_text(encoding="utf-8", errors="replace").strip("\0 \n")
        except FileNotFoundError:
            return None
        if not text:
            return None
        try:
            record = json.loads(text)
            return record if isinstance(record, dict) and not record.get("released") else None
        except json.JSONDecodeError:
            time.sleep(0.05)
    return None


def _seconds(holder: dict, key: str) -> float:
    try:
        return float(holder.get(key, 0))
    except (TypeError, ValueError):  # a foreign or damaged lock file: as if never heard of
        return 0.0


def _describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(_seconds(holder, "since")))
    heard = time.time() - _seconds(holder, "heartbeat")
    return (
        f"`{holder.get('command', '?')}` (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
        f"since {since}, last heard of {heard:.0f} s ago)"
    )


def _alive_here(holder: dict) -> bool:
    """Whether the holder is a live process of this host (used where flock is not available)."""
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except (OSError, ValueError):
        return False
    return True


class _Held:
    """The lock as its holder keeps it: the open file, its record, the heartbeat thread."""

    def __init__(self, path: Path, fd: int, command: str):
        self.path, self.fd = path, fd
        now = time.time()
        self.record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command[:200],
            "since": now,
            "heartbeat": now,
            "token": secrets.token_hex(8),
        }
        self.stop = threading.Event()
        self._write(self.record)
        self.thread = threading.Thread(target=self._beat, name="irpo-run-lock", daemon=True)
        self.thread.start()

    def _write(self, record: dict) -> None:
        data = json.dumps(record).encode().ljust(RECORD_BYTES, b" ")[:RECORD_BYTES]
        os.pwrite(self.fd, data, 0)  # one write of a fixed size, in place: the flock stays on this file
        os.fsync(self.fd)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            if not self._ours():
                # Another machine took the lock over while this one was silent (suspended, or its storage
                # stalled): two commands must not write one run folder, so this one stops, keeping its
                # finished work (the CLI says so, as after Ctrl-C).
                log.error(
                    "the lock %s was taken over by %s; stopping this command", self.path, _describe(_holder(self.path))
                )
                _thread.interrupt_main()
                return
            self.record["heartbeat"] = time.time()
            try:
                self._write(self.record)
            except OSError as exc:  # a full disk: the lease may lapse, the work goes on
                log.warning("could not renew the lock %s (%s)", self.path, exc)

    def _ours(self) -> bool:
        current = _holder(self.path)
        return current is None or current.get("token") == self.record["token"]

    def release(self) -> None:
        self.stop.set()
        self.thread.join()
        try:
            if self._ours():  # never release a lock another command has taken over
                self._write({**self.record, "released": True, "heartbeat": time.time()})
        except OSError:
            pass
        finally:
            os.close(self.fd)  # drops the flock


def _works_under_holder(path: Path) -> bool:
    """Whether this process was started by the lock's holder (it inherited the holder's token)."""
    inherited = os.environ.get(LOCK_ENV, "")
    lock, _, token = inherited.rpartition(":")
    if not token or lock != str(path.resolve()):
        return False
    holder = _holder(path)
    return holder is not None and holder.get("token") == token


def _launched_rank() -> int:
    """This process's rank under torchrun / accelerate launch (which set RANK and WORLD_SIZE); 0 otherwise."""
    try:
        return int(os.environ["RANK"]) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except (KeyError, ValueError):
        return 0


def _in_use(run_root: Path, holder: dict) -> RunLockedError:
    return RunLockedError(
        f"{run_root} is in use by {_describe(holder)}: one command at a time per run folder; wait for it to end "
        "or stop it (a holder that died is taken over at once on its host, after "
        f"{LEASE_S:.0f} s without a heartbeat from another)"
    )


def _acquire(path: Path, run_root: Path, command: str) -> _Held:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        flocked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(run_root, _holder(path) or {}) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            flocked = False
            log.warning("%s: this file system has no flock (%s); relying on the lock's lease alone", path, exc)
        holder = _holder(path)
        if holder is not None:
            here = holder.get("host") == socket.gethostname()
            fresh = time.time() - _seconds(holder, "heartbeat") < LEASE_S
            if (here and not flocked and _alive_here(holder)) or (not here and fresh):
                raise _in_use(run_root, holder)
            log.warning("taking over the lock of %s, which is gone", _describe(holder))
        return _Held(path, fd, command)
    except BaseException:
        os.close(fd)
        raise


@contextmanager
def run_lock(run_root: Path, command: str | None = None) -> Iterator[None]:
    """Hold the run folder `run_root` for this command (and the processes it starts) until the block ends.

    Ranks above 0 of a distributed launch, and processes started under the holder, go on without it.
    """
    if _launched_rank() > 0:
        yield
        return
    if run_root.exists() and not run_root.is_dir():
        raise IrpoError(f"{run_root} is a file, not a run folder; move it away, or choose another name or --runs-dir")
    run_root.parent.mkdir(parents=True, exist_ok=True)
    path = lock_file(run_root)
    if _works_under_holder(path):
        yield
        return
    held = _acquire(path, run_root, command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    before = os.environ.get(LOCK_ENV)
    os.environ[LOCK_ENV] = f"{path.resolve()}:{held.record['token']}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(LOCK_ENV, None)
        else:
            os.environ[LOCK_ENV] = before
        held.release()
