"""`irpo train` on two processes (torchrun, gloo on CPU) against one process, on a tiny random model.

The model is a 2-layer Llama with the demo's tokenizer, made here with a fixed seed: the
point is the parallel plumbing (gradients all-reduced through the scorer module, the global
batch, the split reference pass, main-process-only writes), not what the model learns. fp32, so
one and two processes agree to rounding; the tolerance is stated where it is used.
`accelerate launch --cpu --num_processes 2` starts a single process (accelerate#2741), so the
tests launch with torchrun, as README's "Scaling out" does on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from test_train import pair_table, write_questions

from irpo.card import BUILD_SECTIONS
from irpo.card_loader import load_card
from irpo.runs import RunFolder
from irpo_data.publish import fingerprint, save_pairs, write_card_and_manifest

WORKER = Path(__file__).parent / "assets" / "train_worker.py"
PAIRS = 8
STEPS = 3


def overrides(model: Path) -> list[str]:
    return [
        f"model.base={model}",
        "train.batch_size=4",  # the global batch: 4 per process alone, 2 each on two
        f"train.max_steps={STEPS}",
        f"train.select_every={STEPS}",
        "train.select_questions=2",
        "train.probe_every=1",
        "train.retrain_with_held_out=false",
        "sampling.max_new_tokens=8",
        "train.learning_rate=1e-3",  # large enough that a missed all-reduce shows in the weights
        "train.bf16=false",
    ]


def prepare_run(runs: Path, model: Path, tokenizer) -> list[str]:
    """iter_1 with PAIRS real pairs of demo questions (no sampling); the card overrides for it."""
    from irpo.prompts import render_prompts
    from irpo.tasks import get_task

    cli = overrides(model)
    card = load_card("demo", cli)
    task = get_task("demo")
    questions = task.load("train").questions[:PAIRS]
    pairs = pair_table(questions, render_prompts(task, questions, tokenizer), wrong_by=3, tokenizer=tokenizer)
    run = RunFolder.for_card(card, runs)
    run.freeze_card(card, BUILD_SECTIONS)
    save_pairs(pairs, 1, run.pairs(1))
    write_card_and_manifest(run.iteration(1), "# card\n", {"pairs_fingerprint": fingerprint(pairs)})
    write_questions(run, card, tokenizer)
    return cli


def launch(runs: Path, cli: list[str], processes: int, params: Path) -> subprocess.CompletedProcess:
    params.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "IRPO_TEST_PARAMS": str(params), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        str(WORKER),
        "--runs-dir",
        str(runs),
        "--quiet",
        *cli,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory, tiny_model, demo_tokenizer):
    """The same run trained by one process and by two (fresh run folders, same pairs)."""
    out = {}
    for processes in (1, 2):
        root = tmp_path_factory.mktemp(f"procs{processes}")
        cli = prepare_run(root / "runs", tiny_model, demo_tokenizer)
        launch(root / "runs", cli, processes, root / "params")
        out[processes] = root
    return out


def _model_dir(root: Path) -> Path:
    return root / "runs" / "demo" / "models" / "M_1"


def test_two_processes_agree_with_each_other_and_with_one(one_and_two):
    two = [torch.load(one_and_two[2] / "params" / f"select-rank{r}.pt") for r in (0, 1)]
    one = torch.load(one_and_two[1] / "params" / "select-rank0.pt")
    for name in one:
        # Every rank holds the same weights: DDP all-reduced the gradients through the scorer's forward.
        assert torch.equal(two[0][name], two[1][name]), name
        # Same global batch as one process: the same weights up to float32 rounding (padding widths
        # and summation order differ between a batch of 4 and two of 2).
        torch.testing.assert_close(two[0][name], one[name], rtol=1e-4, atol=1e-5)
    trained = _load(_model_dir(one_and_two[2]))
    for name, value in trained.items():
        torch.testing.assert_close(value, two[0][name])  # the main process wrote the model it trained


def _load(folder: Path) -> dict:
    from transformers import AutoModelForCausalLM

    return dict(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).named_parameters())


def test_two_processes_write_one_record_per_step_and_the_same_reference(one_and_two):
    one, two = _model_dir(one_and_two[1]), _model_dir(one_and_two[2])
    metrics = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))  # one line per step, not per process
    probe = [json.loads(line)["step"] for line in (two / "probe.jsonl").read_text().splitlines()]
    assert probe == list(range(0, STEPS + 1))
    # The reference pass split over two processes gives every pair one process's value.
    ref_one, ref_two = pl.read_parquet(one / "ref_logps.parquet"), pl.read_parquet(two / "ref_logps.parquet")
    assert ref_two.height == PAIRS
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        torch.testing.assert_close(torch.tensor(ref_two[column]), torch.tensor(ref_one[column]))
    manifest = json.loads((two / "train_manifest.json").read_text())
    assert manifest["selected_step"] == STEPS and manifest["steps"] == STEPS
    # Losses logged are the mean over both processes' halves of the batch: close to one process's.
    loss_one = [json.loads(line)["loss"] for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in metrics] == pytest.approx(loss_one, rel=1e-3)
    assert not list(two.parent.glob("*.work")) and not list(two.parent.glob(".tmp-*"))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_scorer_under_fsdp2_gets_every_gradient_and_saves_full_weights(tmp_path, tiny_model, lora):
    """FSDP2 itself (torch's fully_shard on a CPU mesh; accelerate runs it on GPUs only): the scorer as
    root gathers the embeddings and head in its forward, every parameter gets a gradient, and a full
    state dict saved by rank 0 reloads in one process as the starting weights.

    Both processes score the same batch, so averaged gradients equal one process's; gloo's
    reduce-scatter sums where it should average (pytorch#162338), so the factor is 1 or 2, the same
    for every parameter. With LoRA (train.lora=true), the trainable parameters are the adapters."""
    from transformers import AutoModelForCausalLM

    from irpo_train.scorer import CompletionScorer

    worker = Path(__file__).parent / "assets" / "fsdp2_worker.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, str(worker), str(tiny_model), str(tmp_path), *(["lora"] if lora else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    lm = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        lm = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    scorer = CompletionScorer(lm)
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (4, 24))
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, 10:] = True
    logps, lengths = scorer(ids, torch.ones_like(ids), completion)
    (-(logps / lengths).mean()).backward()
    single = {name: p.grad for name, p in scorer.named_parameters() if p.requires_grad}
    assert all("lora_" in name for name in single) if lora else len(single) > 10
    for rank in (0, 1):
        sharded = torch.load(tmp_path / f"fsdp2-rank{rank}.pt")
        torch.testing.assert_close(sharded["logps"], logps.detach(), rtol=1e-5, atol=1e-4)
        assert set(sharded["grads"]) == set(single)  # every parameter, the tied embedding/head included
        probe = max(single, key=lambda name: single[name].norm())  # LoRA A starts with a zero gradient
        factor = (sharded["grads"][probe].norm() / single[probe].norm()).item()
        assert factor == pytest.approx(1.0, rel=1e-3) or factor == pytest.approx(2.0, rel=1e-3)
        for name, grad in sharded["grads"].items():
            torch.testing.assert_close(grad, factor * single[name], rtol=1e-3, atol=1e-6)
    if lora:
        return
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32)
    for (name, value), (_, start) in zip(saved.state_dict().items(), lm.state_dict().items()):
        assert torch.equal(value, start), name


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_fsdp_or_deepspeed_without_gpus_is_refused_before_any_work(tmp_path, monkeypatch, variable):
    """accelerate launch sets these from its config; on CPU accelerate would quietly train without them."""
    from irpo_train.distributed import LaunchError
    from irpo_train.train import train_iteration

    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    monkeypatch.setenv(variable, "true")
    with pytest.raises(LaunchError, match="torchrun --standalone"):
        train_iteration(load_card("demo"), 1, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # nothing written


def test_lora_on_two_processes_trains_the_same_adapters_on_every_rank(tmp_path, tiny_model, demo_tokenizer):
    """train.lora=true under DDP: only the adapters train, both ranks hold the same ones, and the
    model written is the base with them merged in."""
    cli = [*prepare_run(tmp_path / "runs", tiny_model, demo_tokenizer), "train.lora=true", "train.lora_r=4"]
    launch(tmp_path / "runs", cli, 2, tmp_path / "params")
    ranks = [torch.load(tmp_path / "params" / f"select-rank{r}.pt") for r in (0, 1)]
    adapters = [name for name in ranks[0] if "lora_B" in name]
    assert adapters, "no LoRA parameters were trained"
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    assert any(ranks[0][name].abs().sum() > 0 for name in adapters)  # lora_B starts at zero: it moved
    base, merged = _load(tiny_model), _load(_model_dir(tmp_path))
    assert base.keys() == merged.keys()  # plain weights, no adapter left
    assert any(not torch.equal(base[name], merged[name]) for name in base)


def test_two_processes_killed_mid_training_resume_to_the_same_weights(
    tmp_path, one_and_two, tiny_model, demo_tokenizer
):
    """torchrun SIGKILLed (every process) after the first checkpoint; the same launch resumes from it
    and ends with the uninterrupted two-process run's weights."""
    import signal
    import time

    import psutil

    runs = tmp_path / "runs"
    cli = [*prepare_run(runs, tiny_model, demo_tokenizer), "train.save_every=1"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER)]
    command += ["--runs-dir", str(runs), *cli]
    env = {**os.environ, "IRPO_TEST_PARAMS": str(tmp_path), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    checkpoints = runs / "demo" / "models" / "M_1.work" / "select" / "checkpoints"
    killed = subprocess.Popen(command, env=env, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/trainer_state.json")) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # torchrun starts its workers in sessions of their own: kill the whole tree, as a lost node would.
    for process in [*psutil.Process(killed.pid).children(recursive=True), psutil.Process(killed.pid)]:
        process.send_signal(signal.SIGKILL)
    killed.wait()
    assert list(checkpoints.glob("checkpoint-*")) and not _model_dir(tmp_path).exists(), "the kill came too late"
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    assert "resuming the select run from" in resumed.stderr
    reference, trained = _load(_model_dir(one_and_two[2])), _load(_model_dir(tmp_path))
    for name, value in trained.items():
        torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-6)
