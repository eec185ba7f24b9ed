"""Hostile input, the fast tier: every kind of bad input a user can give irpo is one clear line, and
nothing that existed before is lost.

Each case runs a real command in-process (click's CliRunner) on real files, and checks the exit code,
that the output is a single `Error:` line naming the bad input (click's usage errors add their usage
lines), that no traceback shows, and that every file that existed before still exists. No stage
process or engine may start: `run_stage` and the vLLM engine's start raise if anything reaches them.
The model is the 400 kB micro model of tests/assets/previous_run (it loads in milliseconds; nothing
here generates). The cases that need real processes (two builds at once, a noisy grader, a shard cut
short on disk, an engine core outliving its stage) are slow-tier tests in test_build, test_grading_bounds
and test_stages.
"""

from __future__ import annotations

import ast
import dataclasses
import errno
import json
import os
import subprocess
import sys
import time
import typing
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import ASSETS

from irpo.card import ADDED_KEYS, BUILD_SECTIONS, HASHED_AS, NEVER_HASHED, REMOVED_KEYS, Card, flatten
from irpo.card_loader import load_card
from irpo.card_values import RANGES
from irpo.runs import RunFolder
from irpo_run.cli import main

ROOT = Path(__file__).resolve().parents[1]
MICRO = ASSETS / "previous_run" / "base_model"
# Every card key of irpo 0.1.0: a key added since must be in card.ADDED_KEYS (with the value it was
# added at), or it would change every existing run's identity and retrain it.
KEYS_OF_0_1 = """ablations eval.limit eval.maj_k eval.max_new_tokens eval.temperature iterations model.base model.revision
model.trust_remote_code name pairs.drop_off_format pairs.gold_winner pairs.max_pairs pairs.max_tokens
pairs.pairs_per_question pairs.scheme resources.gpu_memory_utilization resources.kv_cache_gb
resources.pipeline_parallel_size resources.ray_address resources.ray_cpus_per_engine resources.ray_engine_restarts
resources.ray_engines resources.sampling_backend resources.tensor_parallel_size sampling.batch_size sampling.dtype
sampling.enforce_eager sampling.engine sampling.max_model_len sampling.max_new_tokens sampling.num_samples
sampling.questions_per_shard sampling.temperatures sampling.top_p seed task.data_dir task.drop_contaminated
task.held_out task.hub_id task.max_questions task.name task.prompt task.selection_split task.split task.test_split
task.train_split task.train_subsets train.alpha train.attn_implementation train.batch_size train.beta train.bf16
train.gradient_accumulation_steps train.gradient_checkpointing train.learning_rate train.lora train.lora_r
train.max_length train.max_steps train.objective train.probe_every train.probe_pairs train.reference_logps
train.report_to train.retrain_with_held_out train.save_every train.select_baseline train.select_every
train.select_questions train.select_with train.warmup_steps""".split()
EVAL_SETTINGS_OF_0_1 = """task task_options maj_k temperature max_new_tokens limit split data_dir hub_id seed dtype backend
max_model_len trust_remote_code""".split()


@pytest.fixture(autouse=True)
def no_stage_or_engine(monkeypatch):
    """Anything that would start a stage's process or an engine fails the test."""
    import irpo_run.loop
    from irpo.engines import VLLMEngine

    def refuse(*args, **kwargs):
        raise AssertionError("a stage process or an engine was started")

    monkeypatch.setattr(irpo_run.loop, "run_stage", refuse)
    monkeypatch.setattr(VLLMEngine, "llm", property(refuse))


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*")] if root.exists() else []


def refused(tmp_path: Path, args: list, names: str, exit_code: int = 1) -> str:
    """Run `irpo ARGS`; check it is refused in one line naming `names`, with nothing lost. The line."""
    before = _files(tmp_path)
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert result.exit_code == exit_code, result.output[-3000:]
    assert len(errors) == 1, result.output[-3000:]
    assert names in errors[0], errors[0]
    assert "Traceback" not in result.output
    assert len(errors[0]) < 1200, f"an error of {len(errors[0])} characters"
    if exit_code == 1:  # our own errors: the one line and nothing else
        assert lines == errors, result.output
    lost = [str(p) for p in before if not p.exists() and not p.is_symlink()]
    assert not lost, f"lost: {lost}"
    return errors[0]


def _card(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "card.yaml"
    path.write_text(text)
    return path


# --- impossible card values, and run names that are paths --------------------------------------

VALUES = [
    ("seed=-1", "seed must be at least 0"),
    ("train.select_every=0", "train.select_every must be at least 1"),
    ("eval.limit=0", "eval.limit must be at least 1"),
    ("pairs.max_pairs=0", "pairs.max_pairs must be at least 1"),
    ("task.max_questions=-1", "task.max_questions must be at least 1"),
    ("sampling.top_p=-3", "sampling.top_p must be above 0"),
    ("resources.gpu_memory_utilization=7", "resources.gpu_memory_utilization must be at most 1"),
    ("resources.tensor_parallel_size=0", "resources.tensor_parallel_size must be at least 1"),
    ("train.learning_rate=.nan", "train.learning_rate must be a finite number, got nan"),
    ("train.beta=.inf", "train.beta must be a finite number, got inf"),
    ("sampling.temperatures=[0.8, -1]", "sampling.temperatures must be at least 0, got -1"),
    ("train.gradient_accumulation_steps=0", "train.gradient_accumulation_steps must be at least 1"),
    ("name=../x", "name '../x' is not a run name"),
    ("name=/abs/path", "name '/abs/path' is not a run name"),
    ("name=..", "name '..' is not a run name"),
    ("name=", "name must be a string, got None"),
    ("name=''", "name '' is not a run name"),
    ("name=" + "n" * 300, "(302 characters) is not a run name"),
    ("sampling.num_samples=" + "9" * 5000, "sampling.num_samples must be an integer, got '99999"),
]


@pytest.mark.parametrize("override,names", VALUES, ids=[v[0][:40] for v in VALUES])
def test_an_impossible_card_value_is_refused_at_the_first_command(tmp_path, override, names):
    """Refused by `irpo run` before anything is written: no run folder, nothing in --runs-dir."""
    refused(tmp_path, ["run", "--runs-dir", tmp_path / "runs", override], names)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_every_number_of_the_card_has_a_range_and_every_key_an_identity_rule():
    numbers = []

    def walk(cls, prefix=""):
        for f in dataclasses.fields(cls):
            kind = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(kind):
                walk(kind, f"{prefix}{f.name}.")
            elif {int, float} & {kind, *typing.get_args(kind)} or (
                typing.get_origin(kind) is list and typing.get_args(kind)[0] in (int, float)
            ):
                numbers.append(f"{prefix}{f.name}")

    walk(Card)
    assert sorted(n for n in numbers if n not in RANGES) == []
    keys = set(flatten(Card().to_dict()))
    # A renamed key is hashed under the name runs were made with (card.HASHED_AS).
    assert set(HASHED_AS.values()) <= set(KEYS_OF_0_1) and set(HASHED_AS) <= keys
    # A key that left its section is hashed at the value runs were made with (card.REMOVED_KEYS).
    assert set(REMOVED_KEYS) <= set(KEYS_OF_0_1) and not set(REMOVED_KEYS) & keys
    unhashed = {k for k in keys if k.split(".")[0] in NEVER_HASHED}
    new = keys - set(KEYS_OF_0_1) - set(ADDED_KEYS) - set(HASHED_AS) - set(REMOVED_KEYS) - unhashed
    assert sorted(new) == [], "a new card key needs an ADDED_KEYS entry, a renamed one a HASHED_AS entry"
    assert all(flatten(Card().to_dict())[k] == v for k, v in ADDED_KEYS.items())  # added at its default
    # The same for what an evaluation result's key holds.
    from irpo_eval.evaluate import ADDED_SETTINGS, RESOURCE_SETTINGS, EvalSettings

    fields = {f.name for f in dataclasses.fields(EvalSettings)} - set(RESOURCE_SETTINGS)
    assert sorted(fields - set(EVAL_SETTINGS_OF_0_1) - set(ADDED_SETTINGS)) == [], "a new setting needs ADDED_SETTINGS"


def test_iterations_in_a_card_are_checked_as_on_the_command_line(tmp_path):
    card = _card(tmp_path, "name: mine\niterations: 0\n")
    refused(tmp_path, ["run", "--card", card, "--runs-dir", tmp_path / "runs"], "iterations must be at least 1")
    refused(tmp_path, ["run", "--runs-dir", tmp_path / "runs", "--iterations", "0"], "0 is not in the range", 2)


def test_a_section_override_merges_into_the_cards_section():
    card = load_card("demo", ["sampling={top_p: 0.9}"])
    demo = load_card("demo")
    assert card.sampling.top_p == 0.9
    assert dataclasses.replace(card.sampling, top_p=demo.sampling.top_p) == demo.sampling  # the rest kept


# --- card files that are not cards ----------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)
CARD_FILES = [
    ("empty", b"", "is empty"),
    ("binary", bytes(range(256)) * 4, "is not UTF-8 text"),
    ("a list", b"- name: x\n- seed: 1\n", "holds a YAML list, not a mapping"),
    ("broken YAML", b"name: [unclosed\n", "is not valid YAML at line 2"),
    ("an alias bomb", BOMB.encode(), "expands to more than 10,000 values"),
]


@pytest.mark.parametrize("what,content,names", CARD_FILES, ids=[c[0] for c in CARD_FILES])
def test_a_card_file_that_is_not_a_card_is_one_line(tmp_path, what, content, names):
    card = tmp_path / "card.yaml"
    card.write_bytes(content)
    line = refused(tmp_path, ["run", "--card", card, "--runs-dir", tmp_path / "runs"], names)
    assert str(card) in line and len(line) < 400  # the bomb's 3 MB of error text are gone


# --- files of the run folder that are corrupt or foreign --------------------------------------


def _run_folder(tmp_path: Path, overrides=()) -> tuple[RunFolder, list[str]]:
    """A frozen card for the micro model (the build's first steps run for real on it)."""
    args = [f"model.base={MICRO}", "sampling.engine=vllm", "task.max_questions=4", "task.held_out=2", *overrides]
    card = load_card("demo", args)
    run = RunFolder.for_card(card, tmp_path / "runs")
    run.freeze_card(card, BUILD_SECTIONS)
    return run, args


RUN_CARDS = [
    ("empty", b"", "the file is empty"),
    ("binary", b"\x00\xff\xfe" * 100, "not UTF-8 text"),
    ("a list", b"- 1\n- 2\n", "holds a YAML list, not a mapping"),
    ("truncated", b"name: demo\nsampling:\n  num_samples: [8\n", "invalid YAML"),
]


@pytest.mark.parametrize("what,content,names", RUN_CARDS, ids=[c[0] for c in RUN_CARDS])
def test_a_corrupt_run_card_is_one_line_and_the_run_is_kept(tmp_path, what, content, names):
    run, args = _run_folder(tmp_path)
    (run.root / "card.yaml").write_bytes(content)
    line = refused(tmp_path, ["run", "--runs-dir", tmp_path / "runs", *args], names)
    assert "card.yaml cannot be read" in line and "restore it" in line
    assert sorted(p.name for p in run.root.parent.iterdir()) == [".demo.lock", "demo"]  # nothing set aside


def test_a_truncated_build_manifest_is_one_line(tmp_path):
    run, args = _run_folder(tmp_path)
    run.iteration(1).mkdir()
    run.manifest(1).write_text('{"build_card_sha256": "ab')
    line = refused(tmp_path, ["data", "build", "--runs-dir", tmp_path / "runs", *args], "manifest.json")
    assert "invalid JSON" in line and "delete it to build that iteration again" in line


def test_a_manifest_field_of_the_wrong_type_is_one_line(tmp_path):
    run, args = _run_folder(tmp_path)
    run.iteration(1).mkdir()
    run.manifest(1).write_text(json.dumps({"build_card_sha256": 7, "counts": []}))
    refused(tmp_path, ["data", "build", "--runs-dir", tmp_path / "runs", *args], "build_card_sha256 is int")


def test_truncated_sampling_settings_are_one_line(tmp_path):
    run, args = _run_folder(tmp_path)
    run.samples(1).mkdir(parents=True)
    (run.samples(1) / "settings.json").write_text("[1, 2")
    line = refused(tmp_path, ["data", "build", "--runs-dir", tmp_path / "runs", *args], "settings.json")
    assert "set the samples/ folder aside to sample that iteration again" in line


def _trained_run(tmp_path: Path) -> tuple[RunFolder, list[str]]:
    """iter_1 with real pairs and manifest, models/M_1 with the micro model's files: a finished run's records."""
    import shutil

    from test_train import pair_table
    from transformers import AutoTokenizer

    from irpo.tasks import get_task
    from irpo_data.publish import fingerprint, save_pairs, write_card_and_manifest

    run, args = _run_folder(tmp_path)
    questions = get_task("demo").load("train").questions[:4]
    pairs = pair_table(questions, [q.text for q in questions], 3, AutoTokenizer.from_pretrained(MICRO))
    save_pairs(pairs, 1, run.pairs(1))
    write_card_and_manifest(run.iteration(1), "card", {"pairs_fingerprint": fingerprint(pairs)})
    shutil.copytree(MICRO, run.model(1))
    return run, args


def test_a_truncated_train_manifest_is_one_line(tmp_path):
    run, args = _trained_run(tmp_path)
    (run.model(1) / "train_manifest.json").write_text('{"train_card_sha256": "x", "pairs_')
    line = refused(tmp_path, ["train", "--runs-dir", tmp_path / "runs", *args], "train_manifest.json cannot be read")
    assert "set that model folder aside to train it again" in line


def test_a_truncated_evaluation_record_is_one_line(tmp_path):
    run, args = _trained_run(tmp_path)
    (run.model(1) / "train_manifest.json").write_text(json.dumps({"objective": "dpo_nll"}))
    (run.root / "evals").mkdir()
    (run.root / "evals" / "M_0.json").write_text('{"key": {"model_weights_sha256": ')
    line = refused(tmp_path, ["eval", "--runs-dir", tmp_path / "runs", *args], "M_0.json cannot be read")
    assert "delete it to evaluate that model again" in line


# --- bad data files ---------------------------------------------------------------------------

GSM8K = {"question": "Tom has 3 apples and gets 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"}
ARC = {
    "id": "q1",
    "question": "Which is a planet?",
    "choices": {"text": ["Mars", "The Moon"], "label": ["A", "B"]},
    "answerKey": "A",
}


def _data(tmp_path: Path, rows: list, task: str = "gsm8k", raw: bytes | None = None) -> Path:
    folder = tmp_path / "data" / task
    folder.mkdir(parents=True)
    text = raw if raw is not None else "".join(json.dumps(r) + "\n" for r in rows).encode()
    (folder / "train.jsonl").write_bytes(text)
    return tmp_path / "data" if task == "arc_challenge" else folder


DATA = [
    (
        "duplicate ids",
        "arc_challenge",
        [ARC, {**ARC, "question": "Another?"}],
        None,
        "question id(s) on more than one row ('q1' in rows 1, 2)",
    ),
    (
        "ARC key not a label",
        "arc_challenge",
        [{**ARC, "answerKey": "E"}],
        None,
        "its answer key 'E' is not one of its labels A, B",
    ),
    ("gold not a number", "gsm8k", [{**GSM8K, "answer": "so the answer is seven"}], None, "is not a number"),
    ("empty question", "gsm8k", [{**GSM8K, "question": "  "}], None, "row 1 has an empty question"),
    ("non-string field", "gsm8k", [{**GSM8K, "question": ["a", "list"]}], None, "field question is list, not str"),
    ("not UTF-8", "gsm8k", None, b'{"question": "caf\xe9", "answer": "#### 1"}\n', "line 1 is not UTF-8 text"),
    ("not JSON", "gsm8k", None, b'{"question": "x", "answer": "#### 1"\n', "line 1 is not valid JSON"),
]


@pytest.mark.parametrize("what,task,rows,raw,names", DATA, ids=[d[0] for d in DATA])
def test_bad_data_is_one_line_naming_the_file_and_row_before_any_model_starts(tmp_path, what, task, rows, raw, names):
    data = _data(tmp_path, rows, task, raw)
    args = ["data", "build", "--card", task, "--runs-dir", tmp_path / "runs", "--data-dir", data]
    if task == "arc_challenge":
        args += ["task.train_subsets=[ARC-Challenge]"]
    line = refused(tmp_path, [*args, f"model.base={MICRO}", "task.held_out=0"], names)
    assert "train.jsonl" in line


def test_a_corrupt_parquet_data_file_is_one_line(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.parquet").write_bytes(b"PAR1 not really")
    args = ["data", "build", "--card", "gsm8k", "--runs-dir", tmp_path / "runs", "--data-dir", folder]
    refused(tmp_path, [*args, f"model.base={MICRO}", "task.held_out=0"], "train.parquet is not a readable parquet")


def test_a_null_gold_is_skipped_and_counted_never_the_gold_none(tmp_path):
    from irpo.tasks import get_task

    folder = _data(tmp_path, [GSM8K, {**GSM8K, "answer": None}])
    loaded = get_task("gsm8k").load("train", str(folder))
    assert [q.gold for q in loaded.questions] == ["7"] and loaded.skipped_empty_gold == 1


def test_a_prompt_longer_than_the_context_is_never_sent_and_is_counted():
    from transformers import AutoTokenizer

    from irpo.prompts import Prompts
    from irpo.tasks import Question, get_task

    tokenizer = AutoTokenizer.from_pretrained(MICRO)  # no chat template: plain prompts
    questions = [Question("q/0", "What is 2 + 3?", "5"), Question("q/1", "Tom has " * 750_000, "5")]  # 6 MB
    kept, dropped = Prompts.of(get_task("demo"), questions, tokenizer, "auto").fit_context(512)
    assert [q.question_id for q in kept.questions] == ["q/0"] and dropped == ["q/1"]
    assert kept.texts == [get_task("demo").user_message(questions[0])] and len(kept.ids[0]) < 512
    assert "| question: prompt longer than the engine's context (not sampled) | 1 |" in _dataset_card(
        {"questions_prompt_too_long": 1}
    )


def _dataset_card(stats: dict) -> str:
    from irpo.pairs import DROP_REASONS
    from irpo_data.publish import dataset_card

    fields = dict.fromkeys(
        "license iteration run model task num_samples pairs_per_question pair_scheme weights_sha256 previous "
        "build_card_sha256 seed temperature engine source fingerprint version".split(),
        "x",
    )
    counts = dict.fromkeys(
        "questions generations generations_kept losers_off_format gold_winners questions_paired contaminated pairs "
        "grading_timeouts questions_no_usable_generation questions_no_correct questions_no_wrong".split(),
        0,
    )
    counts.update({f"dropped_{r}": 0 for r in DROP_REASONS})
    return dataset_card(stats={**counts, **stats, "sample_accuracy": 0.0}, **fields)


# --- a second process on one run folder --------------------------------------------------------

HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from irpo.lock import run_lock
with run_lock(Path({run!r}), "irpo run --card mine"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_command_on_a_held_run_folder_stops_at_once_naming_the_holder(tmp_path):
    run, args = _run_folder(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(root=str(ROOT), run=str(run.root))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for command in (["run"], ["data", "build"], ["train"], ["eval"]):
            line = refused(tmp_path, [*command, "--runs-dir", tmp_path / "runs", *args], f"pid {holder.pid} on host")
            assert "is in use by `irpo run --card mine`" in line and "since" in line
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_whose_holder_is_gone_is_taken_over_and_a_live_remote_one_is_not(tmp_path, caplog):
    from irpo.lock import LEASE_S, RunLockedError, lock_file, run_lock

    root = tmp_path / "runs" / "demo"
    root.mkdir(parents=True)
    now = time.time()
    dead_here = {"pid": 2**22 + 7, "host": os.uname().nodename, "command": "irpo run", "since": now, "heartbeat": now}
    remote = {**dead_here, "host": "node-elsewhere", "heartbeat": now - 5}
    for holder, taken in ((dead_here, True), (remote, False), ({**remote, "heartbeat": now - LEASE_S - 1}, True)):
        lock_file(root).write_text(json.dumps(holder))
        if taken:
            with caplog.at_level("WARNING"), run_lock(root, "irpo data build"):
                assert json.loads(lock_file(root).read_text())["command"] == "irpo data build"
            assert "taking over the lock" in caplog.text
        else:
            with pytest.raises(RunLockedError, match="in use by `irpo run` .pid .* on host node-elsewhere"):
                with run_lock(root, "irpo data build"):
                    pass


# --- nothing the user made is deleted without being asked ---------------------------------------


def test_three_recipe_changes_in_a_row_keep_every_older_run(tmp_path):
    from irpo_run.loop import restart_if_recipe_changed

    run = RunFolder(tmp_path / "demo")
    for seed in (0, 1, 2, 3):
        restart_if_recipe_changed(load_card("demo", [f"seed={seed}"]), run)
        (run.root / "work.txt").write_text(f"seed {seed}")  # what that recipe made
    kept = {p.name: (p / "work.txt").read_text() for p in sorted(tmp_path.iterdir())}
    assert kept == {"demo": "seed 3", "demo.stale-1": "seed 0", "demo.stale-2": "seed 1", "demo.stale-3": "seed 2"}


def test_a_model_pairs_or_checkpoints_that_would_be_replaced_are_set_aside(tmp_path, caplog):
    from irpo.runs import atomic_dir
    from irpo_train.job import start_or_resume

    model = tmp_path / "models" / "M_1"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_text("weeks of training")
    with caplog.at_level("WARNING"), atomic_dir(model) as tmp:
        (tmp / "model.safetensors").write_text("the new one")
    assert (tmp_path / "models" / "M_1.stale-1" / "model.safetensors").read_text() == "weeks of training"
    assert "M_1 was set aside as" in caplog.text

    work = tmp_path / "models" / "M_2.work"
    (work / "select" / "checkpoints" / "checkpoint-400").mkdir(parents=True)
    (work / "ref_logps.json").write_text("{}")
    (work / "identity.json").write_text(json.dumps({"train_card_sha256": "another recipe"}))
    start_or_resume(work, {"train_card_sha256": "this recipe"})
    assert (tmp_path / "models" / "M_2.work.stale-1" / "select" / "checkpoints" / "checkpoint-400").is_dir()
    assert (work / "ref_logps.json").is_file() and not (work / "select").exists()


def test_fresh_is_the_one_way_to_delete_a_run_and_names_what_it_deletes(tmp_path, monkeypatch):
    import irpo_run.cli
    import irpo_run.loop

    run = RunFolder(tmp_path / "runs" / "demo")
    (run.root / "iter_1").mkdir(parents=True)
    (tmp_path / "runs" / "demo.stale-1").mkdir()
    dry = CliRunner().invoke(main, ["run", "--runs-dir", str(tmp_path / "runs"), "--fresh", "--dry-run"])
    assert f"# would delete {run.root}, then run" in dry.output and (run.root / "iter_1").is_dir()
    monkeypatch.setattr(irpo_run.cli, "run_loop", lambda *a, **k: irpo_run.loop.StageTimes())  # the deletion alone
    monkeypatch.setattr(irpo_run.cli, "write_summary", lambda *a, **k: "")
    fresh = CliRunner().invoke(main, ["run", "--runs-dir", str(tmp_path / "runs"), "--fresh"])
    assert fresh.exit_code == 0 and f"--fresh: deleting {run.root} (iter_1)" in fresh.output
    assert not run.root.exists() and (tmp_path / "runs" / "demo.stale-1").is_dir()  # set-aside copies stay


# --- write errors -----------------------------------------------------------------------------

INJECTED = [errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.ENOSPC, errno.EPERM]


@pytest.mark.parametrize("code", INJECTED, ids=[errno.errorcode[c] for c in INJECTED])
def test_a_write_error_is_one_line_naming_the_path_and_the_cause(tmp_path, monkeypatch, code):
    """CI runs as root, where permissions and read-only folders do not stop a write: the errno is
    raised where the write happens (the rename that puts the run's card.yaml in place)."""
    from irpo import runs
    from irpo.command import OS_ERRORS

    real_replace = os.replace

    def failing_replace(src, dst, *a, **k):
        if str(dst).endswith("card.yaml"):
            raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(runs.os, "replace", failing_replace)
    line = refused(tmp_path, ["run", "--runs-dir", tmp_path / "runs"], str(tmp_path / "runs" / "demo" / "card.yaml"))
    assert OS_ERRORS[code][0] in line and "run the same command again" in line
    assert not [p for p in (tmp_path / "runs" / "demo").iterdir() if p.name.startswith(".tmp")]  # nothing half-written


def test_a_run_folder_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").write_text("my notes")
    refused(tmp_path, ["run", "--runs-dir", tmp_path / "runs"], "is a file, not a run folder")
    assert (tmp_path / "runs" / "demo").read_text() == "my notes"


def test_a_training_log_cut_short_on_its_last_line_loses_only_that_line(tmp_path, caplog):
    from irpo.reading import RecordError, read_jsonl

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.6}\n{"step": 3, "lo')
    with caplog.at_level("WARNING"):
        assert [row["step"] for row in read_jsonl(log)] == [1, 2]
    assert "its last line was cut short" in caplog.text
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(RecordError, match="line 2 is not a JSON object"):
        read_jsonl(log)


def test_a_holder_that_was_taken_over_never_releases_the_new_holders_lock(tmp_path):
    from irpo.lock import _holder, lock_file, run_lock

    root = tmp_path / "runs" / "demo"
    with run_lock(root, "irpo run"):
        taken = {"pid": 1, "host": "node-elsewhere", "command": "irpo train", "since": 0, "heartbeat": time.time()}
        lock_file(root).write_text(json.dumps({**taken, "token": "theirs"}))
    assert _holder(lock_file(root))["token"] == "theirs"  # still held by the command that took it over


def test_a_name_too_long_and_a_file_in_the_path_are_real_errors_in_one_line(tmp_path):
    (tmp_path / "runs-file").write_text("not a folder")
    refused(tmp_path, ["run", "--runs-dir", tmp_path / "runs-file"], "is a file", exit_code=2)
    long_dir = tmp_path / ("r" * 300)
    refused(tmp_path, ["run", "--runs-dir", long_dir], "the name is too long")
    (tmp_path / "afile").write_text("not a folder")
    refused(tmp_path, ["run", "--runs-dir", tmp_path / "afile" / "runs"], "a part of the path is a file")


def test_a_polars_write_error_gets_its_errno_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    from polars.exceptions import ComputeError

    from irpo.command import _at_the_boundary
    from irpo.runs import write_parquet_atomic

    def fail(self, path, *a, **k):
        Path(path).write_bytes(b"half a parquet file")
        raise ComputeError("failed to write: Disk quota exceeded (os error 122)")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", fail)
    import click

    with pytest.raises(click.ClickException, match="disk quota is used up"):
        _at_the_boundary(lambda: write_parquet_atomic(pl.DataFrame({"a": [1]}), tmp_path / "part-00000.parquet"))
    assert list(tmp_path.iterdir()) == []


# --- pushes, and what a card may run --------------------------------------------------------------


@pytest.mark.parametrize("repo", ["no-slash", "a/b/c", "org/bad name"])
def test_a_bad_repo_id_is_refused_before_any_work(tmp_path, repo):
    refused(tmp_path, ["run", "--runs-dir", tmp_path / "runs", "--push-to-hub", repo], "is not a Hub repo id")
    assert not (tmp_path / "runs").exists()


def test_trust_remote_code_reaches_every_model_and_tokenizer_load():
    """Every `.from_pretrained(` call in the library passes trust_remote_code (or the kwargs that hold it);
    peft's adapter load and GenerationConfig (a JSON file) are the exceptions: they run no code of the repo's."""
    missing = []
    for package in ("irpo", "irpo_data", "irpo_train", "evals"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                exempt = getattr(node.func.value, "id", "") in ("PeftModel", "GenerationConfig")
                if node.func.attr != "from_pretrained" or exempt:
                    continue
                if not any(k.arg in ("trust_remote_code", None) for k in node.keywords):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert missing == []
