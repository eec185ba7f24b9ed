"""Which process this is, under `torchrun` or `accelerate launch`, and the few collectives irpo needs.

Every process runs the whole of `irpo train`; the Trainer (through accelerate) does the
gradient work. What irpo adds: only the main process writes into the run folder (card, caches,
metrics, probe lines, the selected model), the others wait for it at a barrier; the reference
pass is split over the processes and gathered once. With one process every function here is a
no-op, so the single-process path is the same code.
"""

from __future__ import annotations

import json
import os
import time

import torch

from irpo.errors import IrpoError


class LaunchError(IrpoError, RuntimeError):
    """A launch configuration that cannot work on this machine."""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def barrier() -> None:
    if _initialized() and world_size() > 1:
        torch.distributed.barrier()


def all_gather(obj) -> list:
    """`obj` from every process, in rank order (one process: [obj])."""
    if not _initialized() or world_size() == 1:
        return [obj]
    gathered = [None] * world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def sharding_strategies() -> list[str]:
    """The sharded strategies ("FSDP", "DeepSpeed") the accelerate launch asked for; [] for DDP or one process."""
    return [
        name
        for name, variable in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
        if os.environ.get(variable, "false").lower() in ("1", "true", "yes")
    ]


def check_launch() -> None:
    """Refuse FSDP or DeepSpeed without GPUs: accelerate would quietly run plain DDP instead."""
    wanted = sharding_strategies()
    if wanted and not torch.cuda.is_available():
        raise LaunchError(
            f"the accelerate config asks for {' and '.join(wanted)}, which needs GPUs, and this machine has "
            "none (accelerate would silently train without it); on CPU launch plain DDP: "
            "torchrun --standalone --nproc-per-node N irpo train ..."
        )


def init() -> None:
    """Join the process group torchrun or accelerate launch set up (accelerate's shared state)."""
    if world_size() > 1:
        from accelerate import PartialState  # here: only a launch of several processes needs it

        PartialState()


def wait_for_record(path, flag: str, poll_s: float = 5.0) -> dict:
    """The JSON record at `path` once the main process has set `flag` in it (a non-main process waits)."""

    while True:
        try:
            record = json.loads(path.read_text())
            if record.get(flag):
                return record
        except (OSError, ValueError):
            pass  # not written yet
        time.sleep(poll_s)
