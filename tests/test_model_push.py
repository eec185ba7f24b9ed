"""Models on the Hub (--push-models-to-hub): a branch per iteration, main the latest, the model card, catch-up.

The Hub's servers are the one thing mocked (tests/hub_stub.py, through huggingface_hub's client
factory); huggingface_hub's own create_repo, create_branch, create_commit, list_repo_refs,
list_repo_files and hf_hub_download run. The run folder is small and real but trains nothing:
models/M_t holds a few files (weights of a few bytes), its train_manifest.json written through
TrainManifest, evals/M_t.json through EvalRecord, card.yaml the demo card.
"""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner
from hub_stub import TOKEN
from huggingface_hub import ModelCard

from irpo.card import TRAIN_SECTIONS
from irpo.card_loader import load_card
from irpo.hub import HubError, iteration_tag
from irpo.model_card import pushed_model
from irpo.models import weights_sha256
from irpo.records import EvalRecord, TrainManifest
from irpo.runs import RunFolder, write_text_atomic
from irpo_run import pushes as pushes_module
from irpo_run.pushes import Pushes

REPO = "org/irpo-models"
PAIRS = "org/irpo-pairs"
FINGERPRINT = "ab" * 32
# A token a tokenizer may hold that looks like a path: rewriting it as one would break the tokenizer.
PATH_LIKE_TOKEN = "/usr/share/dict/words"


def fake_run(tmp_path, card_name: str = "demo", iterations=(1,), evaluated: bool = True) -> RunFolder:
    card = load_card(card_name)
    run = RunFolder.for_card(card, tmp_path / "runs")
    write_text_atomic(run.card_file, card.to_yaml())
    for t in iterations:
        add_model(run, t, evaluated=evaluated)
    return run


def add_model(run: RunFolder, t: int, evaluated: bool = True, weights: bytes | None = None) -> None:
    """models/M_t as the trainer leaves it (a few bytes of everything), and evals/M_t.json for its weights."""
    card = load_card(run.root.name)
    folder = run.model(t)
    (folder / "select").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights or f"weights of M_{t}".encode())
    # save_pretrained can record where the model came from: a local path that must not be published.
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "_name_or_path": str(run.model(t - 1))}))
    vocab = {"vocab": {PATH_LIKE_TOKEN: 0, "a": 1}, "merges": [f"{PATH_LIKE_TOKEN} a"]}
    (folder / "tokenizer.json").write_text(json.dumps({"model": vocab}))
    (folder / "logps.png").write_bytes(b"\x89PNG fake")
    (folder / "checkpoint_choice.json").write_text(json.dumps({"best": {"step": 4, "accuracy": 0.625}}))
    (folder / "select" / "metrics.jsonl").write_text('{"step": 4, "loss": 0.5}\n')
    (folder / "ref_logps.parquet").write_bytes(b"PAR1 a cache of the pairs")
    TrainManifest(
        train_card_sha256=card.sha256(TRAIN_SECTIONS),
        pairs_fingerprint=FINGERPRINT,
        iteration=t,
        reference=str(run.model(t - 1)),
        selected_step=4,
        held_out_accuracy=0.625,
        held_out_questions=16,
        steps=8,
        selection_steps=8,
        pairs_trained=100,
        pairs_dropped_too_long=3,
    ).write(run.train_manifest(t))
    if evaluated:
        evaluate(run, t)


def evaluate(run: RunFolder, t: int) -> None:
    key = {"model_weights_sha256": weights_sha256(run.model(t)), "settings": {"maj_k": 4}}
    record = EvalRecord(key=key, model=f"M_{t}", task="demo", questions=50, greedy=0.46, greedy_strict=0.42)
    record.maj_k, record.maj_at_k = 4, 0.52
    record.write(run.eval_record(f"M_{t}"))


def branches(hub) -> dict[str, dict[str, bytes]]:
    return hub.branches[("models", REPO)]


def card_of(hub, branch: str) -> ModelCard:
    return ModelCard(branches(hub)[branch]["README.md"].decode())


def lfs_uploads(hub) -> int:
    return sum(1 for r in hub.requests if r.method == "PUT" and r.url.path.startswith("/lfs-upload/"))


def commit_paths(hub, since: int) -> list[set[str]]:
    """The paths each commit after request number `since` added or deleted."""
    found = []
    for request in hub.requests[since:]:
        if request.method == "POST" and "/commit/" in request.url.path:
            ops = [json.loads(line) for line in request.read().decode().splitlines()]
            found.append({op["value"]["path"] for op in ops if op["key"] != "header"})
    return found


def test_each_iteration_gets_its_branch_and_main_holds_the_latest(tmp_path, hub):
    run = fake_run(tmp_path, iterations=(1, 2))
    pushes = Pushes.start(None, models_repo=REPO)
    pushes.models(run, 2)
    assert not pushes.failed and set(branches(hub)) == {"main", "iter_1", "iter_2"}
    assert branches(hub)["main"] == branches(hub)["iter_2"]  # main is the latest iteration, file for file
    assert pushed_model(branches(hub)["iter_1"]["README.md"].decode()).iteration == 1
    assert pushed_model(branches(hub)["main"]["README.md"].decode()).iteration == 2
    for t in (1, 2):
        files = branches(hub)[f"iter_{t}"]
        assert files["model.safetensors"] == f"weights of M_{t}".encode()
        # The whole folder but the reference log-probs (a training cache), subfolders included.
        assert set(files) == {
            ".gitattributes",
            "README.md",
            "model.safetensors",
            "config.json",
            "tokenizer.json",
            "logps.png",
            "checkpoint_choice.json",
            "train_manifest.json",
            "select/metrics.jsonl",
        }
    # M_2 went to main in one commit and its branch was made there: two commits, each weight file sent once.
    assert hub.commits == 2 and lfs_uploads(hub) == 2


def test_the_card_links_the_pairs_and_gives_the_test_results_as_model_index(tmp_path, hub):
    run = fake_run(tmp_path)
    Pushes.start(PAIRS, models_repo=REPO).models(run, 1)
    card = card_of(hub, "iter_1")
    results = {r.metric_name: r for r in card.data.eval_results}
    assert {name: r.metric_value for name, r in results.items()} == {
        "greedy accuracy": 0.46,
        "greedy accuracy, strict format": 0.42,
        "maj@4": 0.52,
    }
    assert results["maj@4"].metric_args == {"k": 4}
    maj = results["maj@4"]
    assert (maj.task_type, maj.dataset_type, maj.dataset_split, maj.metric_type) == (
        "text-generation",
        "demo",  # the demo task has no Hub dataset: its name
        "test",
        "accuracy",
    )
    tag = iteration_tag(1, FINGERPRINT)
    assert card.data.datasets == [PAIRS] and card.data.to_dict()["irpo"]["pairs_tag"] == tag
    assert f'load_dataset("{PAIRS}", name="iter_1", revision="{tag}")' in card.text
    assert f"[{PAIRS}](https://huggingface.co/datasets/{PAIRS})" in card.text
    # The selection, the test table and every key of the card's train section.
    assert "Step 4 of 8 was selected, with held-out accuracy 62.5% on 16 held-out questions" in card.text
    assert "| greedy, strict format | 42.0% |" in card.text and "| maj@4 | 52.0% |" in card.text
    train_keys = [line.split(" | ")[0][2:] for line in card.text.splitlines() if line.startswith("| train.")]
    assert train_keys == [f"train.{key}" for key in load_card("demo").to_dict()["train"]]
    assert "| train.learning_rate | 2e-05 |" in card.text and "| train.select_with | trainer |" in card.text
    assert "changed after M_1 was trained" not in card.text


def test_without_a_dataset_repo_the_card_says_the_pairs_are_local(tmp_path, hub):
    run = fake_run(tmp_path)
    Pushes.start(None, models_repo=REPO).models(run, 1)
    card = card_of(hub, "iter_1")
    assert card.data.datasets is None
    assert "They were not pushed with this model: they are local to the run (`iter_1/pairs`)" in card.text
    assert f"fingerprint `{FINGERPRINT[:12]}`" in card.text


def test_a_hub_benchmark_is_named_by_its_dataset_id_and_config(tmp_path, hub):
    run = fake_run(tmp_path, card_name="gsm8k")
    Pushes.start(None, models_repo=REPO).models(run, 1)
    greedy = card_of(hub, "iter_1").data.eval_results[0]
    assert (greedy.dataset_type, greedy.dataset_name, greedy.dataset_config) == ("openai/gsm8k", "gsm8k", "main")


@pytest.mark.parametrize("private,asked", [(None, None), (True, "private"), (False, "public")])
def test_a_new_model_repos_visibility_is_the_users_choice_and_else_the_hubs_default(tmp_path, hub, private, asked):
    run = fake_run(tmp_path)
    Pushes.start(None, private, models_repo=REPO).models(run, 1)
    assert hub.visibility[REPO] == asked and "iter_1" in branches(hub)


def test_a_rerun_pushes_nothing_twice_and_results_that_came_later_update_the_card_alone(tmp_path, hub):
    run = fake_run(tmp_path, evaluated=False)
    Pushes.start(None, models_repo=REPO).models(run, 1)
    before = card_of(hub, "main")
    assert before.data.eval_results is None and "Not evaluated yet" in before.text
    commits, uploads = hub.commits, lfs_uploads(hub)

    Pushes.start(None, models_repo=REPO).models(run, 1)  # the same model and card: nothing at all
    assert (hub.commits, lfs_uploads(hub)) == (commits, uploads)

    evaluate(run, 1)
    since = len(hub.requests)
    Pushes.start(None, models_repo=REPO).models(run, 1)
    assert commit_paths(hub, since) == [{"README.md"}, {"README.md"}]  # iter_1, then main: the card alone
    assert lfs_uploads(hub) == uploads
    for branch in ("iter_1", "main"):
        assert [r.metric_value for r in card_of(hub, branch).data.eval_results] == [0.46, 0.42, 0.52]


def test_results_of_other_weights_stay_off_the_card(tmp_path, hub):
    """evals/M_1.json of an M_1 since retrained is not this model's result."""
    run = fake_run(tmp_path)
    (run.model(1) / "model.safetensors").write_bytes(b"retrained, not yet evaluated")
    Pushes.start(None, models_repo=REPO).models(run, 1)
    assert card_of(hub, "iter_1").data.eval_results is None


def test_a_retrained_model_replaces_what_its_branch_held(tmp_path, hub):
    run = fake_run(tmp_path)
    Pushes.start(None, models_repo=REPO).models(run, 1)
    (run.model(1) / "model.safetensors").write_bytes(b"weights of the retrained M_1")
    (run.model(1) / "select" / "metrics.jsonl").unlink()
    evaluate(run, 1)
    Pushes.start(None, models_repo=REPO).models(run, 1)
    for branch in ("iter_1", "main"):
        files = branches(hub)[branch]
        assert files["model.safetensors"] == b"weights of the retrained M_1"
        assert "select/metrics.jsonl" not in files  # gone here, so gone there
        assert pushed_model(files["README.md"].decode()).weights_sha256 == weights_sha256(run.model(1))


def test_a_repo_that_held_other_files_keeps_them_on_main(tmp_path, hub):
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo(REPO)
    readme = CommitOperationAdd("README.md", b"# my models\n")
    api.create_commit(REPO, operations=[readme, CommitOperationAdd("notes.txt", b"mine")], commit_message="m")
    run = fake_run(tmp_path)
    Pushes.start(None, models_repo=REPO).models(run, 1)
    assert branches(hub)["main"]["notes.txt"] == b"mine"
    assert pushed_model(branches(hub)["main"]["README.md"].decode()).iteration == 1
    assert "notes.txt" not in branches(hub)["iter_1"]  # the branch holds M_1 alone


def test_a_repo_with_files_and_no_card_keeps_them_on_main(tmp_path, hub):
    """No README.md is no sign that irpo made the repo: a user's files on main stay."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo(REPO)
    api.create_commit(REPO, operations=[CommitOperationAdd("notes.txt", b"mine")], commit_message="m")
    Pushes.start(None, models_repo=REPO).models(fake_run(tmp_path), 1)
    assert branches(hub)["main"]["notes.txt"] == b"mine"
    assert pushed_model(branches(hub)["main"]["README.md"].decode()).iteration == 1


def test_main_moves_forward_only(tmp_path, hub):
    """A rerun's first iteration pushes M_1 again if it must, but main keeps the later M_2."""
    run = fake_run(tmp_path, iterations=(1, 2))
    Pushes.start(None, models_repo=REPO).models(run, 2)
    commits = hub.commits
    Pushes.start(None, models_repo=REPO).models(run, 1)
    assert hub.commits == commits and pushed_model(branches(hub)["main"]["README.md"].decode()).iteration == 2


def test_an_offline_or_failed_push_is_a_warning_and_the_next_run_catches_up(tmp_path, hub, monkeypatch, caplog):
    run = fake_run(tmp_path, iterations=(1, 2))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING):
        Pushes.start(None, models_repo=REPO).models(run, 2)
    assert "nothing is pushed to org/irpo-models in this run" in caplog.text and REPO not in hub.models
    monkeypatch.delenv("HF_HUB_OFFLINE")

    real_push = pushes_module.push_model

    def network_down_for_m2(run, t, *args, **kwargs):
        if t == 2:
            raise HubError(f"push to {REPO} failed (ConnectError: the network is down)")
        return real_push(run, t, *args, **kwargs)

    monkeypatch.setattr(pushes_module, "push_model", network_down_for_m2)
    failing = Pushes.start(None, models_repo=REPO)
    with caplog.at_level(logging.WARNING):
        failing.models(run, 2)  # no exception: the run goes on
    assert failing.failed == ["M_2"] and "M_2 did not reach org/irpo-models" in caplog.text
    assert set(branches(hub)) == {"main", "iter_1"}

    monkeypatch.setattr(pushes_module, "push_model", real_push)
    Pushes.start(None, models_repo=REPO).models(run, 2)
    assert set(branches(hub)) == {"main", "iter_1", "iter_2"}
    assert pushed_model(branches(hub)["main"]["README.md"].decode()).iteration == 2


def test_no_token_local_path_or_user_name_in_what_is_pushed_or_logged(tmp_path, hub, caplog):
    import getpass

    run = fake_run(tmp_path)
    with caplog.at_level(logging.DEBUG):
        Pushes.start(PAIRS, models_repo=REPO).models(run, 1)
    files = branches(hub)["iter_1"]
    assert not any(TOKEN.encode() in content for content in files.values()) and TOKEN not in caplog.text
    for name, content in files.items():
        assert str(tmp_path).encode() not in content, f"a local path in the pushed {name}"
        assert f"/{getpass.getuser()}/".encode() not in content, f"the user's name in the pushed {name}"
    assert json.loads(files["config.json"])["_name_or_path"] == "models/M_0"  # relative to the run folder
    assert "`models/M_0`" in files["README.md"].decode()
    # The tokenizer's data is uploaded byte for byte: its path-like token is a token, not a path.
    assert files["tokenizer.json"] == (run.model(1) / "tokenizer.json").read_bytes()
    writes = [r for r in hub.requests if r.method == "POST" and r.url.path.startswith("/api/models/")]
    assert writes and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in writes)


def test_a_bad_model_repo_id_is_refused_before_any_work(hub):
    for bad in ("no-slash", "a/b/c", "org/bad name"):
        with pytest.raises(HubError, match=rf"--push-models-to-hub '{bad}' is not a Hub repo id"):
            Pushes.start(PAIRS, models_repo=bad)
    assert hub.requests == []


# --- the commands ---


def test_irpo_train_and_irpo_run_offer_the_flag(hub):
    from irpo_run.cli import main

    for command in (["train", "--help"], ["run", "--help"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 0 and "--push-models-to-hub" in result.output, command


def test_a_dry_run_names_the_push_and_a_bad_repo_id_fails_first(tmp_path, hub):
    from irpo_run.cli import main

    runs = ["--runs-dir", str(tmp_path)]
    result = CliRunner().invoke(main, ["train", "--iter", "2", "--dry-run", "--push-models-to-hub", REPO, *runs])
    assert result.exit_code == 0, result.output
    assert f"then push it to {REPO} (branch iter_2)" in result.output
    result = CliRunner().invoke(main, ["run", "--dry-run", "--push-models-to-hub", REPO, *runs])
    assert result.exit_code == 0 and f"push each M_t to model repo {REPO}" in result.output, result.output
    bad = CliRunner().invoke(main, ["train", "--dry-run", "--push-models-to-hub", "not a repo", *runs])
    assert bad.exit_code == 1 and "--push-models-to-hub 'not a repo' is not a Hub repo id" in bad.output
    side = CliRunner().invoke(main, ["train", "--ablation", "dpo", "--push-models-to-hub", REPO, *runs])
    assert side.exit_code == 2 and "pushes M_T, not the side model of --ablation dpo" in side.output
    assert hub.requests == []
