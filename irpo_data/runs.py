"""The run folder: where every stage reads its inputs and writes its outputs.

    runs/NAME/card.yaml             the resolved card; each stage refuses a change to the sections it depends on
    runs/NAME/iter_T/samples/       parquet shards of graded generations (irpo_data.sampling)
    runs/NAME/iter_T/pairs/         the pair DatasetDict (irpo_data.publish)
    runs/NAME/iter_T/README.md      its dataset card
    runs/NAME/iter_T/manifest.json  hashes and counts, written last: its presence means "done"
    runs/NAME/models/M_T/           the trained model of iteration T (irpo train)

Every file is written under a temporary name in the same folder and renamed into place, so a
reader never sees half a file and a killed command leaves nothing that a rerun would trust.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from irpo_data.card import Card, CardError, card_from_dict, flatten

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @classmethod
    def for_card(cls, card: Card, runs_dir: str | Path = "runs") -> "RunFolder":
        return cls(Path(runs_dir) / card.name)

    def iteration(self, t: int) -> Path:
        return self.root / f"iter_{t}"

    def samples(self, t: int) -> Path:
        return self.iteration(t) / "samples"

    def pairs(self, t: int) -> Path:
        return self.iteration(t) / "pairs"

    def manifest(self, t: int) -> Path:
        return self.iteration(t) / "manifest.json"

    def model(self, t: int, ablation: str | None = None) -> Path:
        """models/M_t, or models/M_t-OBJECTIVE: the side model an ablation trains from the same pairs."""
        return self.root / "models" / (f"M_{t}-{ablation}" if ablation else f"M_{t}")

    def freeze_card(self, card: Card, sections: tuple[str, ...]) -> None:
        """Record the card in card.yaml; refuse one whose `sections` differ from the run's.

        A stage passes the sections it depends on: the builder cannot reuse a run whose
        sampling changed, while a new `train.*` value is fine for it and recorded for the trainer.
        """
        path = self.root / "card.yaml"
        if path.is_file():
            try:
                stored = yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                raise CardError(
                    str(path), [f"not valid YAML ({exc}); restore it, or delete {self.root} to start the run over"]
                ) from None
            frozen = card_from_dict(stored, str(path))
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
                    + [f"this run was made with another recipe; use a new run name (name=...) or delete {self.root}"],
                )
            if frozen == card:
                return
            moved = {k: v for k, v in flatten(frozen.to_dict()).items() if k.startswith("resources.") and v != after[k]}
            if moved:
                changes = ", ".join(f"{k}: {v!r} -> {after[k]!r}" for k, v in sorted(moved.items()))
                log.info("resources changed (%s): they fit the machine and change no result; the run goes on", changes)
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, card.to_yaml())


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; run folders are meant to be shared
        os.replace(tmp, path)
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
        frame.write_parquet(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
