"""A run made by the previous release is found complete: upgrading irpo re-runs nothing.

tests/assets/previous_run/ holds a whole `irpo run` made by irpo at commit 424aee5 (its README says
how). Today's `irpo run` with the same card must skip every stage, keep every file the old run made
byte for byte, and set nothing aside. This is what a card key added at its default (ADDED_KEYS in
irpo/card.py) or a new record field must not break.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from irpo_run.cli import main

PREVIOUS = Path(__file__).parent / "assets" / "previous_run"
# Written again on every `irpo run`, from the records: the summary, the leaderboard, and the card file
# (rewritten with today's keys, the old values unchanged).
DERIVED = {"README.md", "leaderboard.md", "leaderboard.json", "leaderboard.png", "card.yaml"}


def _contents(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow  # each stage runs in a process of its own (irpo_run.stages), as `irpo run` runs them
def test_a_run_made_by_the_previous_release_is_found_complete(tmp_path, monkeypatch, caplog):
    work = tmp_path / "previous"
    shutil.copytree(PREVIOUS, work)
    monkeypatch.chdir(work)  # the card names its model as base_model, relative to here
    before = _contents(work / "run_folders")

    with caplog.at_level("INFO"):
        result = CliRunner().invoke(main, ["run", "--card", "card.yaml", "--runs-dir", "run_folders", "--quiet"])

    assert result.exit_code == 0, result.output
    after = _contents(work / "run_folders")
    changed = sorted(k for k in before if before[k] != after.get(k) and Path(k).name not in DERIVED)
    assert not changed, f"the previous release's files were rewritten: {changed}"
    new = sorted(set(after) - set(before))
    # The run folder's lock, released, and the report every `irpo run` writes from the records.
    assert new == [".prev.lock", "prev/report.html"], f"files the rerun added: {new}"
    assert sorted(p.name for p in (work / "run_folders").iterdir()) == [".prev.lock", "prev"]  # nothing set aside
    assert "iteration 1 already built" in caplog.text
    assert "already trained from these pairs and this reference" in caplog.text
    assert caplog.text.count("already evaluated with these settings") == 2  # M_0 and M_1


def test_retraining_a_model_of_the_previous_release_says_how_to_rebuild_its_iteration(tmp_path, monkeypatch):
    """Its pairs hold text only: the trainer scores token ids, so a changed train.* key is refused in one
    line naming the command that sets the iteration aside; nothing is touched."""
    work = tmp_path / "previous"
    shutil.copytree(PREVIOUS, work)
    monkeypatch.chdir(work)
    before = _contents(work / "run_folders")
    args = ["train", "--card", "card.yaml", "--runs-dir", "run_folders", "train.learning_rate=2e-4"]
    result = CliRunner().invoke(main, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "kept no token ids" in lines[0], result.output
    assert "mv run_folders/prev/iter_1 run_folders/prev/iter_1.old" in lines[0]
    after = _contents(work / "run_folders")
    assert {k: v for k, v in after.items() if k not in (".prev.lock", "prev/card.yaml")} == {
        k: v
        for k, v in before.items()
        if k != "prev/card.yaml"  # the card file records the new train.* value
    }


@pytest.mark.slow  # a vLLM engine samples the iteration again
def test_an_untrained_iteration_of_the_previous_release_is_built_again_with_token_ids(tmp_path, monkeypatch):
    """With nothing trained on it (its model set aside here), the old iteration is sampled again, with ids;
    its text-only samples and pairs are set aside, not deleted."""
    from datasets import load_from_disk

    work = tmp_path / "previous"
    shutil.copytree(PREVIOUS, work)
    monkeypatch.chdir(work)
    run = work / "run_folders" / "prev"
    (run / "models" / "M_1").rename(run / "models" / "M_1.moved-away")
    result = CliRunner().invoke(main, ["data", "build", "--card", "card.yaml", "--runs-dir", "run_folders", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "prompt_token_ids" in load_from_disk(str(run / "iter_1" / "pairs"))["train"].column_names
    assert (run / "iter_1" / "samples.stale-1" / "part-00000.parquet").is_file()
    assert (run / "iter_1" / "pairs.stale-1").is_dir() and (run / "iter_1" / "manifest.json.stale-1").is_file()
