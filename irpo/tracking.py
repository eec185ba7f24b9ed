"""Every stage in the user's experiment tracker: one tracker run per irpo run (card key tracking.report_to).

    with open_tracker(card, run, "build") as tracker:      # nothing at all when report_to is none
        tracker.log({"build/sample_accuracy": 0.41, "build/pairs": 900}, step=1)   # iteration 1
        tracker.table("build/example_pairs", rows, step=1)  # wandb: a Table; tensorboard: a Markdown table

What lands there: the build's counts and sample accuracy, the trainer's curves (live, every logged
step) and held-out checks, each model's test results, and example pairs per iteration. Values of an
iteration are logged at step t (M_0's results at 0); a trainer's curves on their own axis,
`train/M_t/<phase>/step`, so two Trainers and the ablations of one iteration each draw their own curve.

Why not transformers' `report_to`: its integrations see the Trainer only, and each would start a
tracker run of its own in every stage process. Here every stage process (and every Trainer in it)
resumes the same one: wandb by the run id kept in runs/NAME/tracking/wandb_run_id
(`resume="allow"`; its files in runs/NAME/tracking/wandb/), tensorboard as one folder,
runs/NAME/tracking/tensorboard, in which each process writes its own event file. Only the main
process logs (under torchrun: rank 0).

Nothing leaves the machine unless the user asks: wandb runs offline (files under
runs/NAME/tracking/wandb/; `wandb sync runs/NAME/tracking/wandb/offline-run-*` sends them later)
unless tracking.online is true.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from irpo.card import Card, TrackingConfig
from irpo.errors import NotInstalledError
from irpo.runs import RunFolder, write_text_atomic

log = logging.getLogger(__name__)


class Tracker:
    """What a stage logs to: every tracker the card names (none: this class, which drops everything)."""

    def log(self, metrics: dict[str, float], step: int, axis: str = "iteration") -> None:
        """Numbers at `step` of `axis` (the iteration, or a trainer's own step axis); None and NaN are skipped."""

    def table(self, name: str, rows: list[dict], step: int) -> None:
        """A small table (example pairs): a wandb Table, a Markdown table in tensorboard's text tab."""

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, folder: Path, stage: str):
        from torch.utils.tensorboard import SummaryWriter  # here: stage processes have torch; `irpo --help` not

        self.writer = SummaryWriter(str(folder), filename_suffix=f".{stage}")

    def log(self, metrics, step, axis="iteration"):
        for key, value in _numbers(metrics).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def table(self, name, rows, step):
        if rows:
            self.writer.add_text(name, _markdown_table(rows), step)
            self.writer.flush()

    def close(self):
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, folder: Path, card: Card, config: TrackingConfig):
        import wandb  # here: an optional install, and seconds to import

        self.wandb = wandb
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "wandb_run_id"
        if not id_file.is_file():
            write_text_atomic(id_file, secrets.token_hex(6) + "\n")  # a wandb run id: [a-z0-9], 12 here
        self.run = wandb.init(
            project=config.project,
            id=id_file.read_text().strip(),
            name=card.name,
            resume="allow",
            dir=str(folder),
            mode="online" if config.online else "offline",
            config=card.to_dict(),
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.axes: set[str] = set()

    def log(self, metrics, step, axis="iteration"):
        values = _numbers(metrics)
        if not values:
            return
        # wandb's own step must only grow across the stage processes that resume the run; each metric
        # is drawn against its axis instead (define_metric), which may start again at 0.
        for key in values:
            if (key, axis) not in self.axes:
                self.run.define_metric(key, step_metric=axis)
                self.axes.add((key, axis))
        self.run.log({**values, axis: step})

    def table(self, name, rows, step):
        if rows:
            columns = list(rows[0])
            table = self.wandb.Table(columns=columns, data=[[str(row[c]) for c in columns] for row in rows])
            self.run.log({name: table, "iteration": step})

    def close(self):
        self.run.finish()


class Trackers(Tracker):
    """Several trackers as one; a tracker that fails to log warns once and is dropped (the run goes on)."""

    def __init__(self, trackers: dict[str, Tracker]):
        self.trackers = trackers

    def _each(self, method: str, *args) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a tracker is never what stops days of work
                log.warning("%s stopped logging (%s: %s); the run goes on without it", name, type(exc).__name__, exc)
                del self.trackers[name]

    def log(self, metrics, step, axis="iteration"):
        self._each("log", metrics, step, axis)

    def table(self, name, rows, step):
        self._each("table", name, rows, step)

    def close(self):
        self._each("close")


@contextmanager
def open_tracker(card: Card, run: RunFolder, stage: str) -> Iterator[Tracker]:
    """The trackers tracking.report_to names, for one stage process; a no-op Tracker when none (or not rank 0)."""
    names = card.tracking.trackers
    if not names or os.environ.get("RANK", "0") != "0":
        yield Tracker()
        return
    opened: dict[str, Tracker] = {}
    for name in names:
        try:
            if name == "tensorboard":
                opened[name] = TensorBoardTracker(run.tracking / "tensorboard", stage)
            elif name == "wandb":
                opened[name] = WandbTracker(run.tracking, card, card.tracking)
        except ImportError:
            raise NotInstalledError(
                f"tracking.report_to names {name}, which is not installed here: pip install {name} "
                "(or irpo[track]), or set tracking.report_to=none"
            ) from None
    trackers = Trackers(opened)
    try:
        yield trackers
    finally:
        trackers.close()


def _numbers(metrics: dict) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


def _markdown_table(rows: list[dict]) -> str:
    columns = list(rows[0])

    def cell(value) -> str:  # one line per cell: a newline or a pipe would break the table
        return str(value).replace("|", "\\|").replace("\n", " ")[:300]

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
