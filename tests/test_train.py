"""irpo train on the real demo model: tokenisation, the reference cache, a whole tiny run, resume.

Where only the plumbing is checked (the retrain's steps, a SIGKILL's resume, per-step against
precomputed reference log-probs, LoRA's merge, gradient checkpointing) the 2-layer model of
conftest.tiny_model trains instead: same tokenizer and code, checkpoints of megabytes instead of
1.6 GB, steps of milliseconds instead of seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from irpo.card import BUILD_SECTIONS
from irpo.card_loader import load_card
from irpo.errors import RunFolderError, SettingError
from irpo.runs import RunFolder
from irpo_data.publish import fingerprint, save_pairs, write_card_and_manifest
from irpo_train import fit as fit_module
from irpo_train import job as job_module
from irpo_train import train as train_module
from irpo_train.data import collate, gold_solution_rows, tokenize_pairs
from irpo_train.reference import load_or_compute

# Small enough for a few CPU steps: 4 pairs, batch 2, 2 held-out questions, 24 answer tokens.
TINY = [
    "train.retrain_with_held_out=true",  # the paper's (the demo card's is false); some tests turn it off
    "train.batch_size=2",
    "train.max_steps=4",
    "train.select_every=2",
    "train.select_questions=2",
    "train.probe_every=2",
    "sampling.max_new_tokens=24",
    "train.learning_rate=1e-4",
    "train.bf16=false",
]  # fp32: exact at step 1


def pair_table(questions, prompts, wrong_by: int, tokenizer) -> pl.DataFrame:
    """One (right, wrong by `wrong_by`) pair per question, in the pair dataset's columns: the texts, and
    the token ids a build would record (the prompt by irpo.prompts' one-BOS rule, the answers
    closed by the model's end-of-turn token, as if the engine had stopped on it)."""
    from irpo.prompts import encode_answers, encode_prompts, end_of_turn_id

    n = len(questions)
    chosen = [f"We count them. The answer is {q.gold}." for q in questions]
    rejected = [f"We guess. The answer is {int(q.gold) + wrong_by}." for q in questions]
    end = end_of_turn_id(tokenizer)
    return pl.DataFrame(
        {
            "question_id": [q.question_id for q in questions],
            "prompt": prompts,
            "chosen": chosen,
            "rejected": rejected,
            "gold": [q.gold for q in questions],
            "chosen_answer": [q.gold for q in questions],
            "rejected_answer": [str(int(q.gold) + wrong_by) for q in questions],
            "chosen_sample_idx": [0] * n,
            "rejected_sample_idx": [1] * n,
            "prompt_token_ids": encode_prompts(tokenizer, list(prompts)),
            "chosen_token_ids": encode_answers(tokenizer, chosen, end),
            "rejected_token_ids": encode_answers(tokenizer, rejected, end),
        },
        schema_overrides={c: pl.List(pl.Int32) for c in ("prompt_token_ids", "chosen_token_ids", "rejected_token_ids")},
    )


def make_iteration(runs, demo_tokenizer, card):
    """A real pair dataset in iter_1 (TRL format, chat-templated prompts), without sampling."""
    from irpo.prompts import render_prompts
    from irpo.tasks import get_task

    task = get_task("demo")
    questions = task.load("train").questions[:4]
    prompts = render_prompts(task, questions, demo_tokenizer)
    pairs = pair_table(questions, prompts, wrong_by=3, tokenizer=demo_tokenizer)
    run = RunFolder.for_card(card, runs)
    run.freeze_card(card, BUILD_SECTIONS)
    save_pairs(pairs, 1, run.pairs(1))
    write_card_and_manifest(run.iteration(1), "# card\n", {"pairs_fingerprint": fingerprint(pairs)})
    write_questions(run, card, demo_tokenizer)
    return run, pairs


def write_questions(run, card, tokenizer) -> None:
    """iter_1/questions.parquet as the build writes it for this card (the trainer reads its split and prompts)."""
    from irpo.runs import write_parquet_atomic
    from irpo.tasks import task_from_config
    from irpo_data.build import iteration_prompts, question_sets

    sets = question_sets(card)
    *_, table = iteration_prompts(task_from_config(card.task), sets, tokenizer, "auto", card.sampling.max_model_len)
    write_parquet_atomic(table, run.questions(1))


def _id_pairs(prompts, chosen, rejected, tokenizer):
    """A pair Dataset with the recorded token-id columns (answers closed by the end-of-turn token)."""
    from datasets import Dataset

    from irpo.prompts import encode_answers, encode_prompts, end_of_turn_id

    end = end_of_turn_id(tokenizer)
    return Dataset.from_dict(
        {
            "prompt": prompts,
            "chosen": chosen,
            "rejected": rejected,
            "prompt_token_ids": encode_prompts(tokenizer, prompts),
            "chosen_token_ids": encode_answers(tokenizer, chosen, end),
            "rejected_token_ids": encode_answers(tokenizer, rejected, end),
        }
    )


def test_prompt_is_masked_and_answers_end_with_eos(demo_tokenizer):
    data = _id_pairs(["Q: 2+3?\nA:"], [" 5"], [" 6 or so"], demo_tokenizer)
    rows = tokenize_pairs(data, max_length=64).rows
    assert rows[0]["chosen_ids"][-1] == rows[0]["rejected_ids"][-1] == demo_tokenizer.eos_token_id
    assert rows[0]["prompt_ids"] == data["prompt_token_ids"][0]  # the recorded ids, not a re-tokenization
    batch = collate(rows, demo_tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 2  # chosen row, then rejected row
    prompt_len = len(rows[0]["prompt_ids"])
    assert not batch["completion_mask"][:, :prompt_len].any()
    assert batch["completion_mask"][0].sum() == len(rows[0]["chosen_ids"])
    assert batch["completion_mask"][1].sum() == len(rows[0]["rejected_ids"])
    assert (
        batch["attention_mask"][0]
        == batch["completion_mask"][0] | (torch.arange(batch["input_ids"].shape[1]) < prompt_len)
    ).all()


def test_pairs_longer_than_max_length_are_dropped_and_counted(demo_tokenizer):
    data = _id_pairs(["Q?"] * 2, ["short", "long " * 50], ["no", "no"], demo_tokenizer)
    result = tokenize_pairs(data, max_length=20)
    assert len(result.rows) == 1 and result.dropped_too_long == 1
    with pytest.raises(RunFolderError, match="has no prompt_token_ids, chosen_token_ids.*build the iteration again"):
        tokenize_pairs(data.remove_columns(["prompt_token_ids", "chosen_token_ids", "rejected_token_ids"]), 20)


def test_reference_cache_is_reused_for_its_key_and_refused_when_stale(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return [-1.0, -2.0], [-3.0, -4.0], 100.0

    key = {"reference_weights_sha256": "a", "pairs_fingerprint": "p", "max_length": 64}
    assert load_or_compute(tmp_path, key, compute)[0] == [-1.0, -2.0]
    assert load_or_compute(tmp_path, key, compute)[1] == [-3.0, -4.0] and len(calls) == 1  # reused
    load_or_compute(tmp_path, {**key, "pairs_fingerprint": "other"}, compute)
    assert len(calls) == 2  # stale: recomputed, never used
    assert json.loads((tmp_path / "ref_logps.json").read_text())["key"]["pairs_fingerprint"] == "other"


def test_missing_pairs_and_missing_previous_model_say_what_to_run(tmp_path):
    card = load_card("demo", TINY)
    with pytest.raises(RunFolderError, match=r"run `irpo data build --iter 1` first"):
        train_module.train_iteration(card, 1, tmp_path, progress=False)
    run = RunFolder.for_card(card, tmp_path)
    run.iteration(2).mkdir(parents=True)
    save_pairs(pl.DataFrame({"prompt": ["p"], "chosen": ["c"], "rejected": ["r"]}), 2, run.pairs(2))
    write_card_and_manifest(run.iteration(2), "", {"pairs_fingerprint": "f"})
    with pytest.raises(Exception, match=r"models/M_1, which does not exist yet"):
        train_module.train_iteration(card, 2, tmp_path, progress=False)


class StopAfter(TrainerCallback):
    """Raises KeyboardInterrupt (Ctrl-C) after a given step, as a kill mid-training."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_tiny_run_writes_m1_changes_every_weight_and_resumes_after_a_kill(
    tmp_path, demo_model, demo_tokenizer, monkeypatch, caplog
):
    card = load_card("demo", [*TINY, "train.retrain_with_held_out=false"])  # one run: its chosen checkpoint is M_1
    run, _ = make_iteration(tmp_path, demo_tokenizer, card)

    real_trainer = fit_module.DPONLLTrainer
    monkeypatch.setattr(
        fit_module,
        "DPONLLTrainer",
        lambda *a, **k: real_trainer(*a, **{**k, "callbacks": k["callbacks"] + [StopAfter(3)]}),
    )
    with pytest.raises(KeyboardInterrupt):
        train_module.train_iteration(card, 1, tmp_path, progress=False)
    work = run.root / "models" / "M_1.work"
    assert (work / "select" / "checkpoints" / "checkpoint-2").is_dir() and not run.model(1).exists()
    # The Trainer logs a step after on_step_end, so the interrupted step 3 was never logged.
    assert [json.loads(l)["step"] for l in (work / "select" / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    monkeypatch.setattr(fit_module, "DPONLLTrainer", real_trainer)
    with caplog.at_level("INFO"):
        out = train_module.train_iteration(card, 1, tmp_path, progress=False)
    assert "reference log-probs: reusing" in caplog.text and "resuming the select run from" in caplog.text
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "logps.png",
        "checkpoint_choice.json",
        "ref_logps.parquet",
    ):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "train_manifest.json").read_text())
    choice = json.loads((out / "checkpoint_choice.json").read_text())
    # The demo card does not check M_0 (train.select_baseline: false), so step 0 is no candidate.
    assert [h["step"] for h in choice["history"]] == [2, 4] and manifest["selected_step"] in (2, 4)
    assert manifest["pairs_trained"] == 4 and not work.exists()
    # The probe follows the same pairs from step 0 (policy = reference: no change) on; training
    # on them with the NLL term lifts the winners and pushes the losers down.
    probe = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    assert [p["step"] for p in probe] == [0, 2, 4] and probe[0]["pairs"] == 4
    assert probe[0]["chosen_change"] == pytest.approx(0, abs=1e-4) and probe[0]["rejected_change"] == pytest.approx(
        0, abs=1e-4
    )
    assert probe[-1]["chosen_change"] > 0 > probe[-1]["rejected_change"]
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"loss", "dpo", "nll", "reward_margin", "reward_accuracy", "logps_chosen", "logps_rejected"} <= first.keys()
    # At step 1 the policy equals the reference, so every reward is exactly zero: dpo = log 2.
    assert first["dpo"] == pytest.approx(0.693147, abs=1e-4) and first["reward_margin"] == pytest.approx(0, abs=1e-4)

    reference = AutoModelForCausalLM.from_pretrained(demo_model.path).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(out).state_dict()
    unchanged = [name for name, value in trained.items() if torch.equal(value, reference[name])]
    assert unchanged == [], f"parameters that did not move: {unchanged}"

    again = train_module.train_iteration(card, 1, tmp_path, progress=False)  # already done: kept
    assert again == out and json.loads((out / "train_manifest.json").read_text()) == manifest


def test_irpo_train_cli_has_help_and_names_the_missing_build(tmp_path):
    from click.testing import CliRunner

    from irpo_train.cli import main

    help_text = CliRunner().invoke(main, ["--help"])
    assert help_text.exit_code == 0 and "Example" in help_text.output
    result = CliRunner().invoke(main, ["--runs-dir", str(tmp_path), "--iter", "1"])
    assert result.exit_code == 1 and "run `irpo data build --iter 1` first" in result.output


def test_gold_rows_are_graded_tokenised_and_batched_without_losers(demo_tokenizer):
    import dataclasses

    from irpo.prompts import encode_prompts, render_prompts
    from irpo.tasks import get_task

    task = get_task("demo")
    questions = task.load("train").questions[:4]
    prompts = encode_prompts(demo_tokenizer, render_prompts(task, questions, demo_tokenizer))
    end = demo_tokenizer.eos_token_id  # ChatML: <|im_end|> ends the turn and is the EOS
    gold = gold_solution_rows(task, questions, prompts, demo_tokenizer, 512, end)
    assert (len(gold.rows), gold.dropped_ungraded, gold.dropped_too_long) == (4, 0, 0)
    assert all(r["chosen_ids"][-1] == demo_tokenizer.eos_token_id and "rejected_ids" not in r for r in gold.rows)
    assert demo_tokenizer.decode(gold.rows[0]["chosen_ids"][:-1]) == questions[0].solution
    batch = collate(gold.rows[:3], demo_tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 3 and "ref_chosen_logps" not in batch  # B chosen rows, no losers

    wrong = [dataclasses.replace(questions[0], solution="Too hard. The answer is 999."), *questions[1:]]
    worse = gold_solution_rows(task, wrong, prompts, demo_tokenizer, 512, end)
    assert worse.dropped_ungraded == 1 and len(worse.rows) == 3 and worse.fingerprint != gold.fingerprint
    assert gold_solution_rows(task, questions, prompts, demo_tokenizer, 60, end).dropped_too_long > 0
    with pytest.raises(SettingError, match="arc_challenge has no gold solutions"):
        gold_solution_rows(get_task("arc_challenge"), questions, prompts, demo_tokenizer, 512, end)


def test_an_ablation_trains_beside_m1_from_the_same_pairs(tmp_path, demo_model, demo_tokenizer):
    """irpo train --ablation sft_winners: models/M_1-sft_winners, same pairs, M_1 and the run's card untouched."""
    card = load_card("demo", TINY)
    run, pairs = make_iteration(tmp_path, demo_tokenizer, card)
    out = train_module.train_iteration(card, 1, tmp_path, progress=False, ablation="sft_winners")
    assert out == run.model(1, "sft_winners") and not run.model(1).exists()
    manifest = json.loads((out / "train_manifest.json").read_text())
    assert manifest["objective"] == "sft_winners" and manifest["pairs_fingerprint"] == fingerprint(pairs)
    assert manifest["rows_trained"] == 4 and "objective: dpo_nll" in (run.root / "card.yaml").read_text()
    assert "probe_only" in json.loads((out / "ref_logps.json").read_text())["key"]  # SFT scores only the probe pairs
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "nll" in metrics[0] and "dpo" not in metrics[0]
    probe = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    # The probe follows the run that made the model: the retrain, for the chosen number of steps.
    assert [p["step"] for p in probe] == [s for s in (0, 2, 4) if s <= manifest["steps"]] and manifest["retrained"]
    assert probe[0]["chosen_change"] == pytest.approx(0, abs=1e-3)
    assert probe[-1]["chosen_change"] > 0.5  # SFT on the winners raises them


def test_irpo_train_refuses_sft_gold_where_the_task_has_no_solutions(tmp_path):
    from click.testing import CliRunner

    from irpo_train.cli import main

    result = CliRunner().invoke(
        main, ["--card", "arc_challenge", "--runs-dir", str(tmp_path), "--ablation", "sft_gold"]
    )
    assert (
        result.exit_code == 1 and "task arc_challenge has none" in result.output and "choose dpo_nll" in result.output
    )


def test_lora_run_merges_adapters_into_a_plain_model(tmp_path, tiny_model, demo_tokenizer):
    overrides = ["train.lora=true", "train.lora_r=4", "train.max_steps=2", "train.select_every=2"]
    card = load_card("demo", [*TINY, *overrides, f"model.base={tiny_model}"])
    make_iteration(tmp_path, demo_tokenizer, card)
    out = train_module.train_iteration(card, 1, tmp_path, progress=False)
    assert not list(out.glob("adapter_*"))  # merged: a plain transformers folder vLLM can load
    trained = AutoModelForCausalLM.from_pretrained(out).state_dict()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert trained.keys() == reference.keys()
    moved = [n for n in trained if not torch.equal(trained[n], reference[n])]
    # LoRA adapts the linear layers only: those moved, the norms and embeddings did not.
    assert any(".mlp." in n for n in moved) and any(".self_attn." in n for n in moved)
    assert not any("norm" in n or "embed_tokens" in n for n in moved)


def test_gradient_checkpointing_trains_through_the_chunked_head(tmp_path, tiny_model, demo_tokenizer):
    overrides = ["train.gradient_checkpointing=true", "train.max_steps=2", "train.select_every=2"]
    card = load_card("demo", [*TINY, *overrides, f"model.base={tiny_model}"])
    make_iteration(tmp_path, demo_tokenizer, card)
    out = train_module.train_iteration(card, 1, tmp_path, progress=False)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2] and all(s["grad_norm"] > 0 for s in steps)


def test_a_checkpoint_killed_while_saving_is_not_resumed_from(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (1, 2):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
    (folder / "checkpoint-1" / "trainer_state.json").write_text('{"global_step": 1}')
    (folder / "checkpoint-2" / "model.safetensors").write_text("half")  # killed before trainer_state.json
    assert fit_module.last_complete_checkpoint(folder) == str(folder / "checkpoint-1")
    assert not (folder / "checkpoint-2").exists()
    assert fit_module.last_complete_checkpoint(tmp_path / "none") is None


def test_work_of_a_killed_run_is_resumed_only_with_the_same_recipe(tmp_path):
    work = tmp_path / "M_1.work"
    job_module.start_or_resume(work, {"card_sha256": "a"})  # a new run records its recipe
    (work / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # ... trains, and is killed
    (work / "ref_logps.json").write_text("{}")
    job_module.start_or_resume(work, {"card_sha256": "a"})  # same recipe: the checkpoint stays
    assert (work / "checkpoints" / "checkpoint-2").is_dir()
    job_module.start_or_resume(work, {"card_sha256": "b"})  # e.g. another learning rate
    assert not (work / "checkpoints").exists() and (work / "ref_logps.json").is_file()
    assert json.loads((work / "identity.json").read_text()) == {"card_sha256": "b"}


def make_iteration_with_held_out(runs, demo_tokenizer, card):
    """iter_1 with pairs of two training and two held-out questions, as a build with the retrain samples them."""
    from irpo_data.build import question_sets

    run, pairs = make_iteration(runs, demo_tokenizer, card)
    from irpo.prompts import render_prompts
    from irpo.tasks import get_task

    held = question_sets(card).held_out[:2]
    prompts = render_prompts(get_task("demo"), held, demo_tokenizer)
    extra = pair_table(held, prompts, wrong_by=1, tokenizer=demo_tokenizer)
    both = pl.concat([pairs.head(2), extra])
    save_pairs(both, 1, run.pairs(1))
    write_card_and_manifest(run.iteration(1), "# card\n", {"pairs_fingerprint": fingerprint(both)})
    return run, both, {q.question_id for q in held}


# select_every = max_steps: the only trained candidate is step 4, so the retrain runs 4 steps,
# with a checkpoint after each (save_every=1) for the kill below to resume from. The reference is
# checked at step 0 too (the paper cards' default; the demo card skips it).
RETRAIN = [*TINY, "train.select_every=4", "train.save_every=1", "train.probe_every=1", "train.select_baseline=true"]


@pytest.fixture(scope="module")
def retrained(tmp_path_factory, tiny_model, demo_tokenizer):
    """M_1 with the held-out retrain, uninterrupted: checked below, and the reference the kill test
    resumes to (one training fewer than running it again there). On the 2-layer model: what is
    checked is which steps run on which pairs and that a resume is exact, not what the model learns
    (the demo model's 1.6 GB checkpoints after every step made this the slowest training test)."""
    runs = tmp_path_factory.mktemp("retrained")
    card = load_card("demo", [*RETRAIN, f"model.base={tiny_model}"])
    run, pairs, held_ids = make_iteration_with_held_out(runs, demo_tokenizer, card)
    return train_module.train_iteration(card, 1, runs, progress=False), pairs, held_ids


def test_retrain_chooses_the_step_without_the_held_out_questions_then_trains_on_all(retrained):
    out, pairs, held_ids = retrained
    manifest = json.loads((out / "train_manifest.json").read_text())
    assert manifest["retrained"] and manifest["selected_step"] == 4 and manifest["steps"] == 4
    assert manifest["selection"]["pairs"] == 2 and manifest["rows_trained"] == 4  # held-out pairs only in the retrain
    assert manifest["selection"]["pairs_fingerprint"] == fingerprint(
        pairs.filter(~pl.col("question_id").is_in(sorted(held_ids)))
    )
    assert manifest["pairs_fingerprint"] == fingerprint(pairs)
    selection = json.loads((out / "select" / "done.json").read_text())
    assert selection["pairs"] == 2 and selection["steps"] == 4
    choice = json.loads((out / "checkpoint_choice.json").read_text())
    assert [h["step"] for h in choice["history"]] == [0, 4] and choice["questions"] == 2
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
    ]  # the retrain's
    assert [json.loads(l)["step"] for l in (out / "probe.jsonl").read_text().splitlines()] == [0, 1, 2, 3, 4]
    assert (out / "logps.png").read_bytes()[:4] == b"\x89PNG"


def test_without_the_baseline_check_the_choice_skips_step_0_and_the_weights_are_the_same(
    tmp_path, retrained, tiny_model, demo_tokenizer, monkeypatch
):
    """train.select_baseline=false: no held-out check of M_0 at step 0, the same M_1 bit for bit
    (fp32), and no resume checkpoint at a phase's last step (it would be deleted unread)."""
    card = load_card("demo", [*RETRAIN, f"model.base={tiny_model}", "train.select_baseline=false"])  # the last wins
    make_iteration_with_held_out(tmp_path, demo_tokenizer, card)
    saved = []

    class RecordSaves(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            saved.append((Path(args.output_dir).parent.name, state.global_step))

    real_trainer = fit_module.DPONLLTrainer
    monkeypatch.setattr(
        fit_module,
        "DPONLLTrainer",
        lambda *a, **k: real_trainer(*a, **{**k, "callbacks": k["callbacks"] + [RecordSaves()]}),
    )
    out = train_module.train_iteration(card, 1, tmp_path, progress=False)
    choice = json.loads((out / "checkpoint_choice.json").read_text())
    assert [h["step"] for h in choice["history"]] == [4] and choice["best"]["step"] == 4
    # save_every=1 and 4 steps per phase: steps 1-3 are resume points, step 4 is the phase's end.
    assert saved == [("select", 1), ("select", 2), ("select", 3), ("retrain", 1), ("retrain", 2), ("retrain", 3)]
    weights = [AutoModelForCausalLM.from_pretrained(folder).state_dict() for folder in (retrained[0], out)]
    differ = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert differ == [], f"weights differ without the step-0 check: {differ[:5]}"


# Run in the killed process only: once the retrain's step-2 checkpoint is on disk it waits, so the
# kill lands mid-retrain however fast the 2-layer model trains.
PAUSE_AFTER_RETRAIN_STEP_2 = """
import time
from transformers import TrainerCallback
import irpo_train.fit as fit_module
class Pause(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2 and args.output_dir.endswith("/retrain/checkpoints"):
            time.sleep(300)
trainer = fit_module.DPONLLTrainer
fit_module.DPONLLTrainer = lambda *a, **k: trainer(*a, **{**k, "callbacks": k["callbacks"] + [Pause()]})
"""


def test_a_sigkill_mid_retrain_resumes_to_the_same_weights(tmp_path, retrained, tiny_model, demo_tokenizer):
    """A run in a fresh process, SIGKILLed after the retrain's second checkpoint and resumed in
    another, ends with the uninterrupted run's weights (fp32 on one machine: bit for bit)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    card = [*RETRAIN, f"model.base={tiny_model}"]
    code = (
        "import logging, sys\nfrom irpo.card_loader import load_card\nfrom irpo_train.train import train_iteration\n"
        "logging.basicConfig(level=logging.INFO)\n"
        f"train_iteration(load_card('demo', {card!r}), 1, sys.argv[1], progress=False)\n"
    )
    make_iteration_with_held_out(tmp_path / "killed", demo_tokenizer, load_card("demo", card))
    killed = subprocess.Popen(
        [sys.executable, "-c", PAUSE_AFTER_RETRAIN_STEP_2 + code, str(tmp_path / "killed")], start_new_session=True
    )
    checkpoint = tmp_path / "killed" / "demo" / "models" / "M_1.work" / "retrain" / "checkpoints" / "checkpoint-2"
    deadline = time.monotonic() + 600
    while not (checkpoint / "trainer_state.json").is_file() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert checkpoint.is_dir() and not (tmp_path / "killed" / "demo" / "models" / "M_1").exists()
    resumed = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "killed")], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "the select run is done; reusing it" in resumed.stderr and "resuming the retrain run from" in resumed.stderr
    weights = [
        AutoModelForCausalLM.from_pretrained(folder).state_dict()
        for folder in (retrained[0], tmp_path / "killed" / "demo" / "models" / "M_1")
    ]
    differ = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert differ == [], f"resumed weights differ: {differ[:5]}"


def test_the_global_batch_is_the_cards_whatever_the_number_of_processes():
    card = load_card("demo", ["train.batch_size=16", "train.gradient_accumulation_steps=2"])
    assert [fit_module.per_device_batch(card.train, world) for world in (1, 2, 4, 8)] == [8, 4, 2, 1]
    with pytest.raises(SettingError, match=r"batch_size=16 pairs per step cannot be split over 16 process\(es\)"):
        fit_module.per_device_batch(card.train, 16)


def test_per_step_reference_trains_like_the_precomputed_one(tmp_path, tiny_model, demo_tokenizer):
    """train.reference_logps=per_step: a frozen copy of M_0 scores each batch as it trains. Same
    losses as precompute up to float noise (the batches are padded differently), rewards exactly
    zero at step 1, only the probe pairs scored beforehand, the probe's step 0 written as zero.
    On the 2-layer model: the two modes are compared with each other, not with what a model learns."""
    from datasets import load_from_disk

    from irpo_train.reference import reference_logps
    from irpo_train.trainer import PROBE_BATCH_SIZE

    base = [*TINY, "train.retrain_with_held_out=false", f"model.base={tiny_model}"]
    losses, margins = {}, {}
    for mode in ("precompute", "per_step"):
        card = load_card("demo", [*base, f"train.reference_logps={mode}"])
        make_iteration(tmp_path / mode, demo_tokenizer, card)
        out = train_module.train_iteration(card, 1, tmp_path / mode, progress=False)
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[mode] = [m["loss"] for m in metrics]
        margins[mode] = [m["reward_margin"] for m in metrics]
    manifest = json.loads((out / "train_manifest.json").read_text())
    assert manifest["reference_logps"] == "per_step"
    assert metrics[0]["reward_margin"] == pytest.approx(0, abs=1e-6) and metrics[0]["dpo"] == pytest.approx(
        0.693147, abs=1e-6
    )
    assert len(losses["per_step"]) == 4 and losses["per_step"] == pytest.approx(losses["precompute"], rel=1e-3)
    # The NLL term dominates the loss here: the DPO margins show that the reference stayed M_0 (a
    # reference that moved with the policy would keep them at zero).
    assert margins["per_step"][-1] > 1e-3 and margins["per_step"] == pytest.approx(margins["precompute"], rel=0.05)
    assert json.loads((out / "ref_logps.json").read_text())["key"]["probe_only"]["batch_size"] == PROBE_BATCH_SIZE
    probe = [json.loads(line) for line in (out / "probe.jsonl").read_text().splitlines()]
    assert [p["step"] for p in probe] == [0, 2, 4] and probe[0]["chosen_change"] == 0.0
    # (That these losses lift the winners and push the losers down is the demo model's test above,
    # test_tiny_run_writes_m1_...: per_step's losses are precompute's, step by step.)
    # Step 0 is zero by construction: the cached values are what the probe would have measured on M_0.
    rows = tokenize_pairs(
        load_from_disk(str(tmp_path / "per_step" / "demo" / "iter_1" / "pairs"))["train"], card.train.max_length
    ).rows
    measured = reference_logps(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        rows,
        demo_tokenizer.pad_token_id,
        PROBE_BATCH_SIZE,
        False,
    )
    cached = pl.read_parquet(out / "ref_logps.parquet")
    assert cached["ref_chosen_logps"].to_list() == measured[0] and cached["ref_rejected_logps"].to_list() == measured[1]


def test_the_cards_attention_kernel_trains_the_model_and_keys_the_reference_cache(
    tmp_path, tiny_model, demo_tokenizer, monkeypatch
):
    """train.attn_implementation reaches the model that trains (and so its per-step reference copy
    and the held-out checks), and keys the cached reference log-probs: another kernel rounds
    differently, so an sdpa cache must not serve an eager run. The loader is wrapped, not replaced."""
    from irpo.card_loader import CardError

    with pytest.raises(CardError, match=r"train.attn_implementation must be sdpa or eager, got 'flash'"):
        load_card("demo", ["train.attn_implementation=flash"])
    loaded = []
    real = AutoModelForCausalLM.from_pretrained

    def recording(*args, **kwargs):
        model = real(*args, **kwargs)
        loaded.append(model.config._attn_implementation)
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    keys = {}
    for kernel in ("sdpa", "eager"):
        card = load_card(
            "demo",
            [
                *TINY,
                "train.retrain_with_held_out=false",
                f"model.base={tiny_model}",
                f"train.attn_implementation={kernel}",
            ],
        )
        make_iteration(tmp_path / kernel, demo_tokenizer, card)
        loaded.clear()
        out = train_module.train_iteration(card, 1, tmp_path / kernel, progress=False)
        assert loaded[0] == kernel  # the first load is M_0, the model that trains
        keys[kernel] = json.loads((out / "ref_logps.json").read_text())["key"]
    assert keys["eager"]["attn_implementation"] == "eager" and keys["eager"] != keys["sdpa"]
    assert "attn_implementation" not in json.loads((out / "config.json").read_text())  # M_1 loads as any model


def test_per_step_reference_with_lora_switches_the_adapters_off(tiny_model, demo_tokenizer):
    """With LoRA no copy is held: the policy with its adapters off scores as M_{T-1} does."""
    import copy

    from peft import LoraConfig, get_peft_model

    from irpo_train.reference import StepReference
    from irpo_train.scorer import CompletionScorer

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    policy = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():  # trained adapters: the policy now differs from the reference
        for name, weight in policy.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5)
    ids = demo_tokenizer(["Tom has 3 apples. The answer is 3."], add_special_tokens=False)["input_ids"][0]
    batch = collate(
        [{"prompt_ids": ids[:4], "chosen_ids": ids[4:], "rejected_ids": ids[4:8]}] * 2, demo_tokenizer.pad_token_id
    )
    off = StepReference(None)(policy, batch)
    frozen = StepReference(base)(None, batch)
    assert off["ref_chosen_logps"].shape == (2,) and torch.equal(off["ref_chosen_logps"], frozen["ref_chosen_logps"])
    assert torch.equal(off["ref_rejected_logps"], frozen["ref_rejected_logps"])
    with torch.no_grad():
        policy_logps, _ = CompletionScorer(policy)(
            batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        )
    assert not torch.allclose(policy_logps[:2], off["ref_chosen_logps"])  # the adapters were on outside it


def test_a_bf16_reference_copy_holds_half_the_bytes_and_scores_bit_for_bit_the_same(tiny_model, demo_tokenizer):
    """Under bf16 autocast the frozen copy's linear layers are stored in bf16 (autocast rounds them
    so anyway); the tied embedding keeps full precision. The same log-probs as a full-precision copy."""
    import copy

    from irpo_train.reference import StepReference

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    texts = ["Tom has 3 apples and buys 4 more. 3 + 4 = 7. The answer is 7.", "Ann reads 12 pages. The answer is 12."]
    rows = []
    for text in texts:
        ids = demo_tokenizer(text, add_special_tokens=False)["input_ids"]
        rows.append({"prompt_ids": ids[:5], "chosen_ids": ids[5:], "rejected_ids": ids[5:9]})
    batch = collate(rows, demo_tokenizer.pad_token_id)
    full = StepReference(None, bf16=True)
    full.frozen = StepReference(copy.deepcopy(base)).frozen  # a full-precision copy, under the same autocast
    halved = StepReference(copy.deepcopy(base), bf16=True)
    dtypes = {name: p.dtype for name, p in halved.frozen.named_parameters()}
    assert dtypes["lm.model.layers.0.mlp.down_proj.weight"] == torch.bfloat16
    assert dtypes["lm.model.embed_tokens.weight"] == torch.float32  # tied to the head: kept
    assert dtypes["lm.model.norm.weight"] == torch.float32
    expected, got = full(None, batch), halved(None, batch)
    assert torch.equal(expected["ref_chosen_logps"], got["ref_chosen_logps"])
    assert torch.equal(expected["ref_rejected_logps"], got["ref_rejected_logps"])
    saved = sum(p.numel() * p.element_size() for p in full.frozen.parameters()) - sum(
        p.numel() * p.element_size() for p in halved.frozen.parameters()
    )
    projections = sum(p.numel() for name, p in halved.frozen.named_parameters() if name.endswith("proj.weight"))
    assert saved == 2 * projections  # every attention and MLP projection: 4 bytes a weight -> 2


def test_per_step_reference_is_refused_under_fsdp(tmp_path, demo_tokenizer, monkeypatch):
    """FSDP needs GPUs, so a GPU is mocked (torch.cuda.is_available): the refusal comes before any model loads."""
    from irpo_train.distributed import LaunchError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    card = load_card("demo", [*TINY, "train.reference_logps=per_step"])
    make_iteration(tmp_path, demo_tokenizer, card)
    with pytest.raises(LaunchError, match="FSDP cannot shard; set train.reference_logps=precompute"):
        train_module.train_iteration(card, 1, tmp_path, progress=False)


def test_a_fixed_reference_scores_iteration_2_with_m0_and_keys_its_cache(tmp_path, tiny_model, demo_tokenizer):
    """train.reference=initial (M_0 at every iteration, beyond the paper) against the paper's previous
    (M_{t-1}): at t = 2 the cached reference log-probs are M_0's (the very numbers M_1's own pass computed
    on the same pairs), keyed by M_0's weights; the rewards no longer start at zero; the manifest says
    which reference; LoRA with per_step cannot switch to M_0 and is refused before any training."""
    from irpo.models import weights_sha256

    base = [*TINY, "train.retrain_with_held_out=false", "train.max_steps=2", f"model.base={tiny_model}"]
    card = load_card("demo", base)
    run, _ = make_iteration(tmp_path / "m1", demo_tokenizer, card)
    m1 = train_module.train_iteration(card, 1, tmp_path / "m1", progress=False)
    shutil.copytree(run.iteration(1), run.iteration(2))  # iteration 2's pairs: the same pairs, sampled "from M_1"
    caches, manifests, first_steps = {}, {}, {}
    for mode in ("previous", "initial"):
        shutil.copytree(tmp_path / "m1", tmp_path / mode)
        out = train_module.train_iteration(
            load_card("demo", [*base, f"train.reference={mode}"]), 2, tmp_path / mode, progress=False
        )
        caches[mode] = pl.read_parquet(out / "ref_logps.parquet")
        manifests[mode] = json.loads((out / "train_manifest.json").read_text())
        first_steps[mode] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        key = json.loads((out / "ref_logps.json").read_text())["key"]
        assert key["reference_weights_sha256"] == weights_sha256(tiny_model if mode == "initial" else m1)
    assert caches["initial"].equals(pl.read_parquet(m1 / "ref_logps.parquet"))  # M_0's numbers, bit for bit
    assert not caches["previous"].equals(caches["initial"])
    assert first_steps["previous"]["reward_chosen"] == 0.0 and first_steps["initial"]["reward_chosen"] != 0.0
    assert manifests["initial"]["fixed_reference_weights_sha256"] == weights_sha256(tiny_model)
    assert manifests["previous"]["fixed_reference_weights_sha256"] is None
    assert manifests["initial"]["reference_weights_sha256"] == manifests["previous"]["reference_weights_sha256"]
    lora = load_card("demo", [*base, "train.reference=initial", "train.lora=true", "train.reference_logps=per_step"])
    with pytest.raises(SettingError, match="switching the adapters off gives M_{t-1}, not M_0"):
        train_module.train_iteration(lora, 2, tmp_path / "initial", progress=False)


def test_an_ablation_from_sft_starts_from_the_sft_model_and_says_so(tmp_path, tiny_model, demo_tokenizer):
    """dpo_from_sft (the paper's "DPO initialized from SFT"): trained from models/M_1-sft_winners, which is
    also its reference, on the same pairs; refused, naming the command, before that model exists."""
    from irpo.models import weights_sha256

    card = load_card(
        "demo", [*TINY, "train.retrain_with_held_out=false", "train.max_steps=2", f"model.base={tiny_model}"]
    )
    run, pairs = make_iteration(tmp_path, demo_tokenizer, card)
    with pytest.raises(RunFolderError, match=r"irpo train --iter 1 --ablation sft_winners"):
        train_module.train_iteration(card, 1, tmp_path, progress=False, ablation="dpo_from_sft")
    sft = train_module.train_iteration(card, 1, tmp_path, progress=False, ablation="sft_winners")
    out = train_module.train_iteration(card, 1, tmp_path, progress=False, ablation="dpo_from_sft")
    manifest = json.loads((out / "train_manifest.json").read_text())
    assert manifest["reference_weights_sha256"] == weights_sha256(sft) != weights_sha256(tiny_model)
    assert manifest["reference"].endswith("M_1-sft_winners") and manifest["objective"] == "dpo"
    assert manifest["pairs_fingerprint"] == fingerprint(pairs) and manifest["fixed_reference_weights_sha256"] is None
    key = json.loads((out / "ref_logps.json").read_text())["key"]
    assert key["reference_weights_sha256"] == weights_sha256(sft)  # the SFT model scored the pairs
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first["reward_chosen"] == 0.0  # it starts from its reference: rewards start at zero


def test_pairs_labelled_by_vote_train_with_their_weights(tmp_path, tiny_model, demo_tokenizer):
    """pairs.label vote: the pair table's `weight` column reaches the loss. Pairs of weight 0 (a vote margin of 0)
    give no gradient, so M_1 is M_0 to the bit; the same pairs at their margins move the model."""
    from irpo.models import weights_sha256

    card = load_card(
        "demo", [*TINY, "train.retrain_with_held_out=false", "train.max_steps=2", f"model.base={tiny_model}"]
    )
    hashes = {}
    for weight in (0.0, 0.5):
        runs = tmp_path / str(weight)
        run, pairs = make_iteration(runs, demo_tokenizer, card)
        weighted = pairs.with_columns(pl.lit("vote").alias("label"), pl.lit(weight).alias("weight"))
        save_pairs(weighted, 1, run.pairs(1))
        write_card_and_manifest(run.iteration(1), "# card\n", {"pairs_fingerprint": fingerprint(weighted)})
        hashes[weight] = weights_sha256(train_module.train_iteration(card, 1, runs, progress=False))
    assert hashes[0.0] == weights_sha256(tiny_model)
    assert hashes[0.5] != weights_sha256(tiny_model)
