"""Semi-online iterations (sampling.resample_every; irpo.slices) as a user runs them: the slices' plan and what
cannot run; an iteration of two slices, each sampled from the weights training reached, trained as one run in
segments against M_0; and the same iteration killed between its slices and resumed, to the same pairs and weights.

The model is a tiny random Llama-3 whose answers stop (tests/families.py), sampled on the transformers
engine: what it answers does not matter (the gold solutions win, its answers lose), what is checked is which
weights each slice samples from and that the segments make one exact run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from families import FAMILIES, build_family

from irpo.card_loader import load_card
from irpo.errors import SettingError
from irpo.slices import SlicePlan, require_offline, slice_plan

SEMI = [
    "sampling.engine=transformers",
    "task.max_questions=4",
    "task.held_out=2",
    "sampling.num_samples=6",
    "sampling.max_new_tokens=64",  # most answers stop: losers enough for batches that differ
    "pairs.max_tokens=64",
    "pairs.pairs_per_question=4",  # 8 pairs a slice: the batches of its two steps differ
    "train.max_steps=4",
    "sampling.resample_every=2",  # two slices: steps [0, 2) and [2, 4)
    "train.save_every=1",  # a checkpoint after every step, for the kill within slice 1
    "train.batch_size=2",
    "train.gradient_accumulation_steps=1",
    "train.select_every=1",
    "train.select_questions=2",
    "train.retrain_with_held_out=false",
    "train.learning_rate=1e-3",
    "train.reference_logps=precompute",  # a reference pass per slice
    "train.probe_pairs=0",
]


def test_the_slices_and_what_a_semi_online_card_cannot_do():
    plan = SlicePlan(every=3, max_steps=8)
    assert plan.count == 3 and [plan.steps(j) for j in range(3)] == [(0, 3), (3, 6), (6, 8)]
    assert [plan.share(list(range(7)), j) for j in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(SettingError, match="--slice 3 does not exist"):
        plan.check_index(3)
    assert slice_plan(load_card("demo")) is None  # the paper's: offline
    for bad, why in [
        (["train.retrain_with_held_out=true"], "retrain_with_held_out=true would train again"),
        (["train.lora=true"], "train.lora=true"),
        (["train.objective=sft_gold"], "trains on no samples"),
        (["ablations=[dpo]"], "ablations train side models offline"),
        (["sampling.resample_every=9"], "between 1 and train.max_steps=8"),
    ]:
        with pytest.raises(SettingError, match=why):
            slice_plan(load_card("demo", ["sampling.resample_every=4", *bad]))
    with pytest.raises(SettingError, match="one slice at a time with --slice J"):
        require_offline(load_card("demo", ["sampling.resample_every=4"]), "irpo train")


@pytest.fixture(scope="module")
def stopping_model(tmp_path_factory, demo_model):
    return build_family(FAMILIES["llama3"], demo_model.path, tmp_path_factory.mktemp("semi") / "llama3")


def _cli(name: str, *args) -> list[str]:
    return [shutil.which(name) or str(Path(sys.executable).parent / name), *map(str, args)]


def _kill_once(command: list[str], env: dict, written: Path, timeout: float = 300) -> None:
    """Run `command` in a process group of its own and SIGKILL the group as soon as `written` exists."""
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + timeout
    while not written.is_file() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow  # samples and trains a tiny model in several processes
def test_a_semi_online_iteration_killed_between_slices_resumes_to_the_same_pairs_and_weights(
    tmp_path, stopping_model, caplog
):
    from datasets import load_from_disk

    from irpo.models import weights_sha256
    from irpo.runs import RunFolder
    from irpo_data.build_slice import build_slice
    from irpo_run.report import write_report
    from irpo_train.train_slice import train_slice

    overrides = [f"model.base={stopping_model}", *SEMI]
    card = load_card("demo", overrides)
    straight = tmp_path / "straight"
    for j in (0, 1):
        build_slice(card, 1, j, straight, progress=False)
        train_slice(card, 1, j, straight, progress=False)
    root = straight / "demo"
    slices = [json.loads((root / f"iter_1/slices/slice-{j}/record.json").read_text()) for j in (0, 1)]
    manifest = json.loads((root / "models/M_1/train_manifest.json").read_text())
    trained = manifest["semi_online"]["slices"]
    # Slice 0 was sampled from M_0, slice 1 from the weights after step 2, which are not M_0's.
    assert slices[0]["weights_sha256"] == weights_sha256(stopping_model)
    assert slices[1]["weights_sha256"] == trained[0]["weights_sha256"] != slices[0]["weights_sha256"]
    settings = json.loads((root / "iter_1/samples/slice-1/settings.json").read_text())
    assert settings["weights_sha256"] == trained[0]["weights_sha256"]
    assert [s["steps"] for s in slices] == [[0, 2], [2, 4]] and [s["steps"] for s in trained] == [[0, 2], [2, 4]]
    # The iteration's pairs are every slice's, published as a build's; M_1 names them.
    pairs = pl.from_arrow(load_from_disk(str(root / "iter_1/pairs"))["train"].data.table)
    assert set(pairs["slice"]) == {0, 1} and pairs.height == sum(s["counts"]["pairs"] for s in slices)
    # The premise of the kill within slice 1 below: its pairs are not all one pair, so its two steps' batches differ.
    second = pairs.filter(pl.col("slice") == 1).select("question_id", "chosen_sample_idx", "rejected_sample_idx")
    assert second.n_unique() > 1
    built = json.loads((root / "iter_1/manifest.json").read_text())
    assert manifest["pairs_fingerprint"] == built["pairs_fingerprint"] and manifest["steps"] == 4
    # One run in segments: steps 1-4 in one metrics file, the held-out checks of both, and DPO's reference
    # is M_0 throughout: the rewards are zero at step 1 only (from step 2 on the policy has moved from M_0),
    # also at step 3, slice 1's first, which a reference of the slice's own start would make zero again.
    metrics = [json.loads(line) for line in (root / "models/M_1/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[0]["reward_chosen"] == 0.0 and all(m["reward_chosen"] != 0.0 for m in metrics[1:])
    choice = json.loads((root / "models/M_1/checkpoint_choice.json").read_text())
    assert [h["step"] for h in choice["history"]] == [1, 2, 3, 4]
    assert not (root / "models/M_1.work").exists()  # the segments' checkpoints and weights are gone
    html = write_report(RunFolder(root)).read_text()  # the report lists the slices and what each sampled from
    assert "Slices (semi-online" in html and "the weights after step 2" in html
    assert trained[0]["weights_sha256"][:12] in html

    # The same iteration with `irpo run`, killed once slice 0 is trained, before slice 1 is built...
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = killed / "demo/models/M_1.work/slices/slice-0/done.json"
    _kill_once(_cli("irpo", "run", "--iterations", 1, "--runs-dir", killed, "--quiet", *overrides), env, done)
    assert done.is_file() and not (killed / "demo/iter_1/slices/slice-1/record.json").exists()

    # ... then resumed slice by slice (here in this process, what `irpo data build --slice J` and `irpo train
    # --slice J` call): slice 0 is not built or trained again; slice 1's training, in a process of its own, is
    # killed after its first step (step 3's checkpoint), and resumed there.
    caplog.set_level(logging.INFO)
    build_slice(card, 1, 0, killed, progress=False)
    train_slice(card, 1, 0, killed, progress=False)
    assert "slice 0: already built" in caplog.text and "slice 0: already trained" in caplog.text
    build_slice(card, 1, 1, killed, progress=False)
    checkpoint = killed / "demo/models/M_1.work/select/checkpoints/checkpoint-3/trainer_state.json"
    _kill_once(_cli("irpo", "train", "--slice", 1, "--runs-dir", killed, "--quiet", *overrides), env, checkpoint)
    assert not (killed / "demo/models/M_1").exists(), "slice 1's training ended before it could be killed"
    caplog.clear()
    train_slice(card, 1, 1, killed, progress=False)
    assert "resuming the select run from" in caplog.text and "checkpoint-3" in caplog.text
    again = killed / "demo"
    assert json.loads((again / "iter_1/manifest.json").read_text())["pairs_fingerprint"] == built["pairs_fingerprint"]
    assert weights_sha256(again / "models/M_1") == weights_sha256(root / "models/M_1")
    # M_1 is the best checked step, which may come before the kill: every step's loss is compared too.
    losses = [{k: m[k] for k in ("step", "loss", "dpo", "nll", "reward_chosen", "reward_rejected")} for m in metrics]
    resumed_metrics = [json.loads(line) for line in (again / "models/M_1/metrics.jsonl").read_text().splitlines()]
    assert [{k: m[k] for k in losses[0]} for m in resumed_metrics] == losses
    # A whole-iteration command on a semi-online card says how to run it.
    whole = subprocess.run(
        _cli("irpo", "train", "--runs-dir", killed, *overrides), env=env, capture_output=True, text=True
    )
    assert whole.returncode == 1 and "one slice at a time with --slice J" in whole.stderr
