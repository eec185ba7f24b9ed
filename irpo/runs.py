"""The run folder: where every stage reads its inputs and writes its outputs.

    runs/NAME/card.yaml             the resolved card; each stage refuses a change to the sections it depends on
    runs/NAME/iter_T/samples/       parquet shards of graded generations (irpo_data.sampling)
    runs/NAME/iter_T/pairs/         the pair DatasetDict (irpo_data.publish)
    runs/NAME/iter_T/README.md      its dataset card
    runs/NAME/iter_T/manifest.json  hashes and counts, written last: its presence means "done"
    runs/NAME/models/M_T/           the trained model of iteration T (irpo train)

Every file is written under a temporary name in the same folder, fsynced, and renamed into place,
so a reader never sees half a file and a killed command (or a crashed machine) leaves nothing that a
rerun would trust. Nothing finished is deleted: what would be replaced is set aside (`set_aside`,
as NAME.stale-N) and the log says where.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from irpo.card import Card, flatten
from irpo.card_loader import CardError, card_from_dict
from irpo.reading import read_yaml

log = logging.getLogger(__name__)


# The records a stage writes last (their presence means the stage is done), by name: a folder that
# is not a RunFolder method's (a phase of training, an ablation's model) holds them under these names.
MANIFEST = "manifest.json"  # iter_t/: the build's
TRAIN_MANIFEST = "train_manifest.json"  # models/M_t/: the trainer's
CHECKPOINT_CHOICE = "checkpoint_choice.json"  # models/M_t/ and each training run: the held-out checks' choice
LEADERBOARD = ("leaderboard.json", "leaderboard.md", "leaderboard.png")


@dataclass(frozen=True)
class RunFolder:
    """Every path of a run, by what it holds (docs/architecture.md lists them)."""

    root: Path

    @classmethod
    def for_card(cls, card: Card, runs_dir: str | Path = "runs") -> "RunFolder":
        return cls(Path(runs_dir) / card.name)

    @property
    def card_file(self) -> Path:
        """card.yaml: the resolved card, frozen at the first command (`freeze_card`)."""
        return self.root / "card.yaml"

    def iteration(self, t: int) -> Path:
        return self.root / f"iter_{t}"

    def samples(self, t: int) -> Path:
        return self.iteration(t) / "samples"

    def pairs(self, t: int, factor: int = 1) -> Path:
        """iter_t/pairs, or iter_t/pairs_{factor}x: the same samples paired with factor x K per question."""
        return self.iteration(t) / ("pairs" if factor == 1 else f"pairs_{factor}x")

    def pairs_record(self, t: int, factor: int) -> Path:
        """iter_t/pairs_{factor}x.json: what the pairs at factor x K were built from, and their fingerprint."""
        return self.iteration(t) / f"pairs_{factor}x.json"

    def slice(self, t: int, j: int) -> Path:
        """iter_t/slices/slice-J: slice J of a semi-online iteration (sampling.resample_every): its pairs/ and
        record.json (irpo.slices). Its samples are iter_t/samples/slice-J/, shards with their own settings.json."""
        return self.iteration(t) / "slices" / f"slice-{j}"

    def slice_weights(self, t: int, step: int) -> Path:
        """The weights a semi-online iteration reached at `step`, saved for the next slice's sampling."""
        return self.models / f"M_{t}.work" / "weights" / f"step-{step}"

    def questions(self, t: int) -> Path:
        """iter_t/questions.parquet: the questions the build used, their roles and prompt ids."""
        return self.iteration(t) / "questions.parquet"

    def manifest(self, t: int) -> Path:
        return self.iteration(t) / MANIFEST

    def model(self, t: int, ablation: str | None = None) -> Path:
        """models/M_t, or models/M_t-OBJECTIVE: the side model an ablation trains from the same pairs."""
        return self.models / (f"M_{t}-{ablation}" if ablation else f"M_{t}")

    def train_manifest(self, t: int, ablation: str | None = None) -> Path:
        return self.model(t, ablation) / TRAIN_MANIFEST

    @property
    def models(self) -> Path:
        return self.root / "models"

    def ablation_models(self, t: int) -> list[Path]:
        """models/M_t-NAME folders (not their .work or set-aside .stale-N siblings), by name."""
        found = self.models.glob(f"M_{t}-*") if self.models.is_dir() else []
        return sorted(p for p in found if re.fullmatch(rf"M_{t}-\w+", p.name))

    @property
    def evals(self) -> Path:
        return self.root / "evals"

    def eval_record(self, model: str) -> Path:
        """evals/MODEL.json for models/MODEL (M_0 is the card's base model)."""
        return self.evals / f"{model}.json"

    def eval_verdicts(self, model: str) -> Path:
        """evals/MODEL.verdicts.parquet: each test question's verdicts (irpo_eval.evaluate.question_verdicts)."""
        return self.evals / f"{model}.verdicts.parquet"

    @property
    def ablations_figure(self) -> Path:
        """ablations_logps.png: the log-prob curves of M_1 and its ablations, side by side."""
        return self.root / "ablations_logps.png"

    @property
    def summary(self) -> Path:
        """README.md: the run summary irpo run writes."""
        return self.root / "README.md"

    @property
    def report(self) -> Path:
        """report.html: the run on one page (irpo_run.report), written after each stage and by `irpo report`."""
        return self.root / "report.html"

    @property
    def tracking(self) -> Path:
        """tracking/: the trackers' files (tensorboard/, wandb/, wandb's run id) when tracking.report_to names one."""
        return self.root / "tracking"

    def leaderboard(self) -> list[Path]:
        """leaderboard.json (for tools), .md (for people), .png."""
        return [self.root / name for name in LEADERBOARD]

    def freeze_card(self, card: Card, sections: tuple[str, ...]) -> None:
        """Record the card in card.yaml; refuse one whose `sections` differ from the run's.

        A stage passes the sections it depends on: the builder cannot reuse a run whose
        sampling changed, while a new `train.*` value is fine for it and recorded for the trainer.
        """
        path = self.card_file
        if path.is_file():
            frozen = card_from_dict(read_yaml(path), str(path))
            before = {
                k: v for k, v in flatten(frozen.to_dict()).items() if k.split(".")[0] in sections or k in sections
            }
            after = flatten(card.to_dict())
            diff = [
                f"{k}: {before[k]!r} in the run, {after.get(k)!r} now"
                for k in sorted(before)
                if before[k] != after.get(k)
            ]
            if diff:
                raise CardError(
                    str(path),
                    diff
                    + [
                        "this run was made with another recipe: use a new run name (name=...), or `irpo run`, which "
                        f"sets {self.root} aside and starts over"
                    ],
                )
            if frozen == card:
                return
            moved = {k: v for k, v in flatten(frozen.to_dict()).items() if k.startswith("resources.") and v != after[k]}
            if moved:
                changes = ", ".join(f"{k}: {v!r} -> {after[k]!r}" for k, v in sorted(moved.items()))
                log.info("resources changed (%s): they fit the machine and change no result; the run goes on", changes)
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, card.to_yaml())


def set_aside(path: Path, why: str) -> Path:
    """Rename `path` to `<name>.stale-N` beside it (the first free N) and say so; nothing is deleted.

    Why: a run folder holds days of GPU work. What a changed recipe would replace (a whole run, an
    iteration, a trained model, a pair dataset, another recipe's checkpoints) is kept under a new name
    every time; deleting is for the user to ask (`irpo run --fresh`, or `rm`).
    """
    for number in range(1, 10_000):
        target = path.with_name(f"{path.name}.stale-{number}")
        if not target.exists() and not target.is_symlink():
            os.rename(path, target)
            log.warning("%s: %s was set aside as %s (delete it when you no longer need it)", why, path, target)
            return target
    raise OSError(errno.EEXIST, "no free .stale-N name", str(path))


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())  # the data is on disk before the name points at it
        os.chmod(tmp, 0o644)  # mkstemp makes files private; run folders are meant to be shared
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet_atomic(frame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=".parquet", dir=path.parent)
    os.close(fd)  # unique per writer: two processes never share a temporary file
    tmp = Path(name)
    try:
        try:
            frame.write_parquet(tmp)
        except Exception as exc:  # polars' write errors carry no errno: give them the one its message names
            raise os_error_of(exc, tmp) from None
        fsync_file(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def os_error_of(exc: BaseException, path: Path) -> BaseException:
    """`exc` as an OSError with its errno, for libraries (polars, safetensors) that report a failed
    write as "... (os error 28)" or "code: 28" in a message; other exceptions are returned as they are."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    found = re.search(r"os error (\d+)|code: (\d+)|\[errno (\d+)\]", str(exc), re.IGNORECASE)
    if not found:
        return exc
    number = int(next(g for g in found.groups() if g))
    return OSError(number, os.strerror(number), str(path))


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a crash after it cannot bring back the old name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder` (written by a library: save_pretrained, save_to_disk)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fsync_file(Path(root) / name)


@contextmanager
def atomic_dir(path: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it becomes `path` in one rename.

    An existing `path` is set aside (`set_aside`), or with `replace` (work in progress that is the
    caller's own, such as the best checkpoint so far) deleted.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        os.chmod(tmp, 0o755)
        if path.exists():
            if replace:
                shutil.rmtree(path)
            else:
                set_aside(path, f"{path.name} is being written anew")
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        converted = os_error_of(exc, tmp)  # a library's write error (safetensors, pyarrow) with its errno
        if converted is not exc:
            raise converted from exc
        raise
