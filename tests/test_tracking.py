"""Every stage in the user's tracker (irpo.tracking): one tracker run per irpo run, across stage processes.

wandb runs offline here (as irpo's default) with its server address pointed at a closed port, so
nothing can be sent; tensorboard's event files are read back with tensorboard's own reader. The
whole loop with tensorboard on (build, train, eval stages in their own processes) is in
tests/test_loop.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from irpo.card import TRAIN_SECTIONS
from irpo.card_loader import card_from_dict, load_card
from irpo.errors import NotInstalledError
from irpo.runs import RunFolder
from irpo.tracking import open_tracker


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} over every event file in `folder` (one per stage process), read by tensorboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    return scalars


def tensorboard_texts(folder: Path) -> dict[str, str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    texts = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in events.Tags()["tensors"]:
            texts[tag] = events.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
    return texts


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # a closed port: nothing could be sent
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_two_stage_processes_log_into_one_tracker_run(tmp_path, offline_wandb):
    card = load_card("demo", ["tracking.report_to=[tensorboard, wandb]"])
    run = RunFolder(tmp_path / "demo")
    rows = [{"question_id": "q1", "chosen": "<script>alert(1)</script> The answer is 4.", "rejected": "5"}]
    with open_tracker(card, run, "build-1") as tracker:  # as the build stage's process does
        tracker.log({"build/pairs": 12, "build/sample_accuracy": 0.25, "build/contaminated": None}, step=1)
        tracker.table("build/example_pairs_1", rows, step=1)
    with open_tracker(card, run, "train-M_1") as tracker:  # ... and then the train stage's
        for step in (1, 2):
            tracker.log({"train/M_1/select/loss": 1.0 / step}, step, axis="train/M_1/select/step")
        tracker.log({"eval/greedy": 0.5}, step=1)

    scalars = tensorboard_scalars(run.tracking / "tensorboard")
    assert scalars["build/pairs"] == {1: 12.0} and scalars["build/sample_accuracy"] == {1: 0.25}
    assert scalars["train/M_1/select/loss"] == {1: 1.0, 2: 0.5} and scalars["eval/greedy"] == {1: 0.5}
    assert "build/contaminated" not in scalars  # None is not a number to draw
    table = tensorboard_texts(run.tracking / "tensorboard")["build/example_pairs_1/text_summary"]
    assert (
        table.splitlines()[0] == "| question_id | chosen | rejected |" and "| q1 |" in table
    )  # TensorBoard sanitises it
    # wandb: one run id, stored once and resumed by the second process; offline files, one folder per process.
    run_id = (run.tracking / "wandb_run_id").read_text().strip()
    offline = sorted((run.tracking / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline)
    logged = b"".join(p.joinpath(f"run-{run_id}.wandb").read_bytes() for p in offline)
    assert b"build/pairs" in logged and b"train/M_1/select/loss" in logged and b"eval/greedy" in logged
    assert not list((run.tracking / "wandb").glob("run-*"))  # "run-*" folders are online runs


def test_no_tracker_by_default_and_none_but_on_rank_0(tmp_path, monkeypatch):
    run = RunFolder(tmp_path / "demo")
    with open_tracker(load_card("demo"), run, "build-1") as tracker:
        tracker.log({"build/pairs": 1}, step=1)
    monkeypatch.setenv("RANK", "1")  # under torchrun, another process than the main one
    with open_tracker(load_card("demo", ["tracking.report_to=tensorboard"]), run, "train-M_1") as tracker:
        tracker.log({"train/M_1/select/loss": 1.0}, 1, axis="train/M_1/select/step")
    assert not run.tracking.exists()


def test_a_tracker_that_is_not_installed_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed: its import fails
    with pytest.raises(NotInstalledError, match=r"tracking.report_to names wandb.*pip install wandb"):
        with open_tracker(load_card("demo", ["tracking.report_to=wandb"]), RunFolder(tmp_path / "d"), "build-1"):
            pass


def test_report_to_left_the_train_section_and_every_identity(caplog):
    """The old key train.report_to loads as tracking.report_to with a note; no value of it changes a hash."""
    with caplog.at_level(logging.WARNING):
        old = card_from_dict({"train": {"report_to": "wandb"}})
    assert old.tracking.trackers == ("wandb",) and "train.report_to is now tracking.report_to" in caplog.text
    hashes = {card_from_dict({"tracking": {"report_to": r}}).sha256(TRAIN_SECTIONS) for r in ("none", "wandb")}
    assert hashes == {card_from_dict({}).sha256(TRAIN_SECTIONS)} == {old.sha256(TRAIN_SECTIONS)}
    assert load_card("demo", ["tracking.report_to=[tensorboard, wandb]"]).tracking.trackers == ("tensorboard", "wandb")
    with pytest.raises(Exception, match="tracking.report_to must be"):
        load_card("demo", ["tracking.report_to=mlflow"])
