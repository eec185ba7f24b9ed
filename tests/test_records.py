"""The run folder's records as types: today's names written, an old run folder's names still read."""

from __future__ import annotations

import json

from irpo.records import BuildManifest, EvalRecord, TrainManifest


def test_records_round_trip_and_keep_keys_they_do_not_know(tmp_path):
    manifest = BuildManifest(build_card_sha256="c", pairs_fingerprint="f", iteration=1, counts={"pairs": 3})
    manifest.write(tmp_path / "manifest.json")
    assert BuildManifest.from_json(tmp_path / "manifest.json") == manifest
    newer = {**manifest.to_dict(), "a_key_from_a_later_version": 7}
    assert BuildManifest.from_dict(newer).to_dict()["a_key_from_a_later_version"] == 7


def test_an_old_run_folders_records_load_under_todays_names(tmp_path):
    """Written by irpo before 2026-12 (the shape of the demo run in BENCHMARKS.md)."""
    old_build = {
        "card_sha256": "c",
        "weights_sha256": "w",
        "dataset_fingerprint": "f",
        "counts": {"train_accuracy": 0.1},
    }
    build = BuildManifest.from_dict(old_build)
    assert (build.build_card_sha256, build.pairs_fingerprint, build.counts["sample_accuracy"]) == ("c", "f", 0.1)
    old_train = {
        "card_sha256": "t",
        "pairs_fingerprint": "f",
        "reference_weights_sha256": "r",
        "ablation": True,
        "steps": 16,
    }
    train = TrainManifest.from_dict(old_train)
    assert (train.train_card_sha256, train.ablation, train.selection_steps, train.bf16) == ("t", None, 16, False)
    (tmp_path / "M_1.json").write_text(
        json.dumps({"greedy": 0.3, "maj": 0.4, "pass": 0.6, "sample_mean": 0.2, "maj_k": 4})
    )
    record = EvalRecord.from_json(tmp_path / "M_1.json")
    assert (record.maj_at_k, record.pass_at_k, record.sample_accuracy, record.greedy_strict) == (0.4, 0.6, 0.2, None)
    assert "sample_mean" not in record.to_dict() and record.to_dict()["sample_accuracy"] == 0.2


def test_the_previous_releases_records_load_under_todays_names():
    """The run folder made by the previous release (tests/assets/previous_run) names the selected checkpoint
    chosen_step; read today it is selected_step, with the same value, and nothing is left over in `extra`."""
    from pathlib import Path

    folder = Path(__file__).parent / "assets" / "previous_run" / "run_folders" / "prev" / "models" / "M_1"
    raw = json.loads((folder / "train_manifest.json").read_text())
    manifest = TrainManifest.from_json(folder / "train_manifest.json")
    assert "chosen_step" in raw and manifest.selected_step == raw["chosen_step"]
    assert "chosen_step" not in manifest.extra
