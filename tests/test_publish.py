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

from irpo_data.card import PairsConfig
from irpo_data.pairs import build_pairs
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
