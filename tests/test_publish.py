"""Publishing: DatasetDict on disk, dataset card, and the Hub push checked against a stand-in.

The Hub's servers are the one thing mocked (tests/hub_stub.py answers its HTTP API through
`huggingface_hub.set_client_factory`); Xet uploads are switched off in these tests because the
Xet client speaks its own protocol outside that HTTP client. Everything else is real:
datasets' push_to_hub, huggingface_hub's commit and tag calls, parquet, polars.
"""

from __future__ import annotations

import io
import json
import logging

import huggingface_hub
import polars as pl
import pytest
from datasets import load_from_disk
from hub_stub import TOKEN
from test_pairs import SPEC, samples_table

from irpo.card import PairsConfig
from irpo.pairs import build_pairs
from irpo_data.publish import (
    PublishError,
    dataset_card,
    fingerprint,
    push_iteration,
    save_pairs,
    write_card_and_manifest,
)


def built_iteration(tmp_path, iteration=1):
    pairs, stats = build_pairs(samples_table(SPEC), PairsConfig(pairs_per_question=4, max_tokens=50), seed=0)
    stats["contaminated"] = 0
    iter_dir = tmp_path / f"iter_{iteration}"
    save_pairs(pairs, iteration, iter_dir / "pairs")
    fp = fingerprint(pairs)
    card = dataset_card(
        license="mit",
        iteration=iteration,
        run="t",
        model="m",
        task="gsm8k",
        num_samples=5,
        pairs_per_question=4,
        stats=stats,
        pair_scheme="cycle",
        weights_sha256="w",
        previous="none",
        build_card_sha256="c",
        seed=0,
        temperature=0.8,
        engine="vllm",
        source="s",
        fingerprint=fp,
        version="0",
    )
    write_card_and_manifest(iter_dir, card, {"pairs_fingerprint": fp, "counts": stats})
    return iter_dir, pairs, fp


def test_saved_pairs_load_back_in_trl_format(tmp_path):
    iter_dir, pairs, _ = built_iteration(tmp_path)
    loaded = load_from_disk(str(iter_dir / "pairs"))
    assert list(loaded) == ["train"]
    train = loaded["train"]
    assert train.column_names[:4] == ["question_id", "prompt", "chosen", "rejected"]
    assert {"gold", "chosen_answer", "rejected_answer", "iteration"} <= set(train.column_names)
    assert train.num_rows == pairs.height == 12 and set(train["iteration"]) == {1}  # 3 questions x K = 4, cycled
    card = (iter_dir / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n") and "config_name: iter_1" in card
    assert "| generation truncated | 2 |" in card and "| pairs (K = 4 per question, scheme cycle) | 12 |" in card


def test_push_uploads_config_card_manifest_and_tag_without_leaking_the_token(tmp_path, hub, caplog):
    iter_dir, pairs, fp = built_iteration(tmp_path)
    with caplog.at_level(logging.DEBUG):
        tag = push_iteration(iter_dir, "org/irpo-test", 1, fp)
    files = hub.repos["org/irpo-test"]
    assert tag == f"iter_1-{fp[:12]}" and hub.tags["org/irpo-test"] == [tag]
    shard = [name for name in files if name.startswith("iter_1/") and name.endswith(".parquet")]
    assert shard == ["iter_1/train-00000-of-00001.parquet"]
    uploaded = pl.read_parquet(io.BytesIO(files[shard[0]]))
    assert uploaded.drop("iteration").equals(pairs)
    assert "config_name: iter_1" in files["README.md"].decode()  # datasets' root card lists the config
    assert 'load_dataset("org/irpo-test", name="iter_1"' in files["iter_1/README.md"].decode()
    assert json.loads(files["iter_1/manifest.json"])["pairs_fingerprint"] == fp
    # The token authenticates every call and appears in nothing uploaded or logged.
    writes = [r for r in hub.requests if r.method == "POST" and r.url.path.startswith("/api/datasets/")]
    assert len(writes) >= 4 and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in writes)
    assert not any(TOKEN.encode() in content for content in files.values())
    assert TOKEN not in caplog.text


def test_second_iteration_becomes_a_second_config_of_the_same_repo(tmp_path, hub):
    for iteration in (1, 2):
        iter_dir, _, fp = built_iteration(tmp_path, iteration)
        push_iteration(iter_dir, "org/irpo-test", iteration, fp)
    readme = hub.repos["org/irpo-test"]["README.md"].decode()
    assert "config_name: iter_1" in readme and "config_name: iter_2" in readme
    assert len(hub.tags["org/irpo-test"]) == 2


def test_offline_push_fails_clearly_and_keeps_the_local_dataset(tmp_path, monkeypatch):
    iter_dir, _, fp = built_iteration(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PublishError, match=r"HF_HUB_OFFLINE is set.*is complete.*irpo data push --iter 1"):
        push_iteration(iter_dir, "org/irpo-test", 1, fp)
    assert load_from_disk(str(iter_dir / "pairs"))["train"].num_rows == 12


def test_missing_token_says_how_to_log_in(tmp_path, monkeypatch):
    iter_dir, _, fp = built_iteration(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored login either
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    with pytest.raises(PublishError, match="no Hugging Face token: run `hf auth login` or set HF_TOKEN"):
        push_iteration(iter_dir, "org/irpo-test", 1, fp)


def test_an_iteration_without_pairs_saves_and_loads_as_an_empty_split(tmp_path):
    pairs, _ = build_pairs(
        samples_table({"q_all_wrong": SPEC["q_all_wrong"]}), PairsConfig(pairs_per_question=4, max_tokens=50), seed=0
    )
    assert pairs.height == 0
    save_pairs(pairs, 1, tmp_path / "pairs")
    train = load_from_disk(str(tmp_path / "pairs"))["train"]
    assert train.num_rows == 0 and "chosen" in train.column_names


# --- what is published is what the user chose (issue 31) ---


@pytest.mark.parametrize("private,asked", [(None, None), (True, "private"), (False, "public")])
def test_a_new_repos_visibility_is_the_users_choice_and_else_the_hubs_default(tmp_path, hub, private, asked):
    """None sends no visibility at all, so the Hub's default for the user or org holds (an org whose
    repos are private by default stays private); --private and --public say so explicitly."""
    iter_dir, _, fp = built_iteration(tmp_path)
    push_iteration(iter_dir, "org/irpo-test", 1, fp, private=private)
    assert hub.visibility["org/irpo-test"] == asked


def test_pushed_files_carry_no_local_path_user_or_host_name(tmp_path, hub):
    """The dataset card, the manifest, the evaluation records: absolute paths become paths relative to
    the run folder, or their last two parts without the user's name."""
    import getpass
    import socket
    from pathlib import Path

    from irpo.hub import push_files

    run_root = tmp_path / "runs" / "t"
    iter_dir, _, fp = built_iteration(run_root)
    home_data = f"{Path.home()}/{getpass.getuser()}-data/gsm8k/train.jsonl"
    card = (iter_dir / "README.md").read_text().replace("`m`", f"`{run_root}/models/M_0`")
    (iter_dir / "README.md").write_text(card + f"\nsource: {home_data}\n")
    manifest = {"pairs_fingerprint": fp, "data_source": home_data, "model": str(run_root / "models" / "M_1")}
    (iter_dir / "manifest.json").write_text(json.dumps(manifest))
    evals = run_root / "evals" / "M_1.json"
    evals.parent.mkdir(parents=True)
    evals.write_text(json.dumps({"key": {"settings": {"data_dir": str(tmp_path / "data")}}, "host": "see below"}))
    push_iteration(iter_dir, "org/irpo-test", 1, fp)
    push_files("org/irpo-test", {"evals/M_1.json": evals}, "m", retry="r", run_root=run_root)
    files = hub.repos["org/irpo-test"]
    texts = {name: content.decode() for name, content in files.items() if not name.endswith(".parquet")}
    for name, text in texts.items():
        for private in (str(tmp_path), str(Path.home()) + "/", f"/{getpass.getuser()}/", socket.gethostname()):
            assert private not in text, f"{private!r} in the pushed {name}"
    pushed = json.loads(texts["iter_1/manifest.json"])
    assert pushed["model"] == "models/M_1" and pushed["data_source"] == "gsm8k/train.jsonl"
    assert "`models/M_0`" in texts["iter_1/README.md"]
    assert json.loads(texts["evals/M_1.json"])["key"]["settings"]["data_dir"] == f"{tmp_path.name}/data"


def _run_with_iterations(tmp_path, count: int):
    from irpo.runs import RunFolder

    run = RunFolder(tmp_path / "runs" / "t")
    fingerprints = [built_iteration(run.root, t)[2] for t in range(1, count + 1)]
    return run, fingerprints


def test_pushes_catch_up_on_a_rerun_and_push_nothing_twice(tmp_path, hub, monkeypatch, caplog):
    """Offline, nothing is pushed and the run says it will catch up; online, every finished iteration the
    repo has no tag for is pushed (also where the build was skipped), and a rerun pushes nothing again."""
    from irpo.hub import iteration_tag
    from irpo_run.pushes import Pushes

    run, fingerprints = _run_with_iterations(tmp_path, 2)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING):
        offline = Pushes.start("org/irpo-test")
        offline.catch_up(run, 2)
    assert "the pushes catch up on the next run" in caplog.text and not hub.repos
    monkeypatch.delenv("HF_HUB_OFFLINE")
    online = Pushes.start("org/irpo-test", private=True)
    online.catch_up(run, 2)
    assert hub.tags["org/irpo-test"] == [iteration_tag(t, fp) for t, fp in zip((1, 2), fingerprints)]
    assert hub.visibility["org/irpo-test"] == "private" and not online.failed
    commits = hub.commits
    Pushes.start("org/irpo-test").catch_up(run, 2)
    assert hub.commits == commits  # both tags are there: nothing pushed again


def test_a_failed_push_is_a_warning_and_the_run_goes_on(tmp_path, hub, monkeypatch, caplog):
    from irpo_run import pushes

    run, _ = _run_with_iterations(tmp_path, 1)

    def refuse(*args, **kwargs):
        raise PublishError("push of iter_1 to org/irpo-test failed (ConnectError: the network is down)")

    monkeypatch.setattr(pushes, "push_iteration", refuse)
    hub_pushes = pushes.Pushes.start("org/irpo-test")
    with caplog.at_level(logging.WARNING):
        hub_pushes.catch_up(run, 1)  # no exception
    assert hub_pushes.failed == ["iteration 1"] and "the run goes on, and the next run catches up" in caplog.text


def test_a_bad_repo_id_and_a_refused_token_are_found_before_any_work(hub, monkeypatch):
    from irpo_run.pushes import Pushes

    for bad in ("no-slash", "a/b/c", "org/bad name", "org/--x"):
        with pytest.raises(PublishError, match="is not a Hub repo id"):
            Pushes.start(bad)
    monkeypatch.setenv("HF_TOKEN", "hf_notTheRightOne")
    with pytest.raises(PublishError, match="the Hub refused access to org/irpo-test .*check the token"):
        Pushes.start("org/irpo-test")


def test_an_owner_the_token_cannot_write_is_refused_and_an_unreachable_hub_only_postpones(hub, monkeypatch, caplog):
    """Online, the token's account must be the repo's owner or a member of it; a Hub that cannot be
    reached (no network, and HF_HUB_OFFLINE not set) is not a refusal: the run goes on, pushing nothing."""
    import httpx2
    from huggingface_hub.utils._http import default_client_factory

    from irpo_run.pushes import Pushes

    with pytest.raises(PublishError, match="account 'user' is not 'stranger' nor a member of it"):
        Pushes.start("stranger/irpo-test")

    def unreachable(request):
        raise httpx2.ConnectError("Name or service not known", request=request)

    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(unreachable)))
    try:
        with caplog.at_level(logging.WARNING):
            pushes = Pushes.start("org/irpo-test")
    finally:
        huggingface_hub.set_client_factory(default_client_factory)
    assert not pushes.online and "could not reach the Hub to check org/irpo-test" in caplog.text
