"""The one reader of a run folder's files: JSON records, YAML, parquet tables and saved datasets.

    read_json(Path("runs/demo/iter_1/manifest.json"))
    -> {...}, or RecordError: "runs/demo/iter_1/manifest.json cannot be read (invalid JSON at line 3):
       restore it, or delete it to build iteration 1 again (its finished sample shards are kept)"

A run folder is the only copy of days of work, and its files can be truncated (a full disk, a copy
cut short), emptied, or replaced by something else. Every stage reads through here, so any such
file is one line that names it and says what to do, never a traceback, and nothing is deleted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from irpo.errors import IrpoError


class RecordError(IrpoError, ValueError):
    """A file of the run folder that cannot be read as what it should be."""


# What deleting each kind of file redoes (by file name; the folder it is in decides the rest).
REDO = {
    "card.yaml": "restore it, or move the run folder away to start the run over",
    "manifest.json": "restore it, or delete it to build that iteration again (its finished sample shards are kept)",
    "settings.json": "restore it, or set the samples/ folder aside to sample that iteration again",
    "hardware.json": "restore it, or delete it (it only records the machine the samples came from)",
    "train_manifest.json": "restore it, or set that model folder aside to train it again",
    "checkpoint_choice.json": "restore it, or delete it to score the held-out checks again",
    "done.json": "restore it, or delete it to run that training phase again",
    "identity.json": "restore it, or delete it (the work folder is then started over)",
    "ref_logps.json": "delete it to compute the reference log-probs again",
    "ref_logps.parquet": "delete it to compute the reference log-probs again",
    "gold.parquet": "delete it and the iteration's manifest.json to build the iteration again",
}


def _fix(path: Path) -> str:
    if path.parent.name == "evals":
        return "restore it, or delete it to evaluate that model again"
    if path.name.startswith("pairs_") and path.suffix == ".json":
        return "delete it and its folder to pair the samples again"
    return REDO.get(path.name, "restore it, or delete it and run the same command again to redo what wrote it")


def unreadable(path: Path, why: str) -> RecordError:
    error = RecordError(f"{path} cannot be read ({why}); {_fix(path)}")
    error.reason = why
    return error


def read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise unreadable(path, f"not UTF-8 text, byte {exc.start}") from None
    except OSError as exc:
        raise unreadable(path, exc.strerror or type(exc).__name__) from None


def read_json(path: Path, expect: type = dict) -> Any:
    """The JSON value in `path`, which must be an `expect` (dict unless said)."""
    text = read_text(path)
    if not text.strip():
        raise unreadable(path, "the file is empty")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise unreadable(path, f"invalid JSON{where}") from None
    if not isinstance(value, expect):
        raise unreadable(path, f"it holds a JSON {type(value).__name__}, not a {expect.__name__}")
    return value


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of an append-only log (metrics.jsonl, probe.jsonl), [] if there is none.

    A last line cut short (a kill or a full disk while appending) is left out with a warning: the step
    it logged is trained again. A bad line elsewhere is a RecordError."""
    if not path.is_file():
        return []
    lines = [line for line in read_text(path).splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            if number == len(lines):
                logging.getLogger(__name__).warning("%s: its last line was cut short; leaving it out", path)
                break
            raise unreadable(path, f"line {number} is not a JSON object") from None
        rows.append(row)
    return rows


def read_yaml(path: Path) -> dict:
    """The YAML mapping in `path`."""

    text = read_text(path)
    if not text.strip():
        raise unreadable(path, "the file is empty")
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        mark = getattr(exc, "problem_mark", None)
        raise unreadable(path, "invalid YAML" + (f" at line {mark.line + 1}" if mark else "")) from None
    if not isinstance(value, dict):
        raise unreadable(path, f"it holds a YAML {type(value).__name__}, not a mapping")
    return value


def read_parquet(path: Path, columns: dict | None = None, only: bool = False):
    """The polars table in `path`; with `columns` ({name: polars dtype}) those must be there, of those types
    (and with `only`, just those are read)."""
    import polars as pl

    try:
        frame = pl.read_parquet(path, columns=list(columns) if only and columns else None)
    except Exception as exc:  # noqa: BLE001  (polars raises several kinds for a truncated or foreign file)
        raise unreadable(path, f"not a readable parquet file: {type(exc).__name__}") from None
    for name, dtype in (columns or {}).items():
        if name not in frame.columns:
            raise unreadable(path, f"no column {name}")
        if frame.schema[name] != dtype:
            raise unreadable(path, f"column {name} is {frame.schema[name]}, not {dtype}")
    return frame


def load_dataset_dir(path: Path):
    """A DatasetDict saved with save_to_disk (the pairs)."""
    from datasets import load_from_disk  # here: most readers of run folders never need it

    try:
        return load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001  (missing shards, bad JSON, foreign folders: all one answer)
        raise RecordError(
            f"{path} cannot be read as a saved dataset ({type(exc).__name__}); restore it, or delete it and the "
            "iteration's manifest.json to build the iteration's pairs again"
        ) from None
