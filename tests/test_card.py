"""The recipe card: bundled cards load, bad cards fail with every problem named at once."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import ASSETS

from irpo.card import Card
from irpo.card_loader import BUNDLED_CARDS, CardError, load_card


@pytest.mark.parametrize("name", BUNDLED_CARDS)
def test_every_bundled_card_loads(name):
    card = load_card(name)
    assert card.name == name
    assert card.train.beta == 0.1 and card.train.alpha == 1.0


def test_paper_settings_per_benchmark():
    gsm8k, arc, math = load_card("gsm8k"), load_card("arc_challenge"), load_card("math")
    assert (gsm8k.sampling.num_samples, gsm8k.pairs.pairs_per_question) == (30, 10)
    assert (arc.sampling.num_samples, arc.pairs.pairs_per_question) == (30, 20)
    assert (math.sampling.num_samples, math.pairs.pairs_per_question) == (20, 15)
    assert [gsm8k.sampling.temperature(t) for t in (1, 2, 3, 4, 5)] == [0.8, 0.8, 1.3, 1.3, 1.3]
    assert [math.sampling.temperature(t) for t in (1, 2, 3)] == [0.8, 0.8, 1.0]  # "0.8 for iterations 1-2, 1.0 for 3"
    assert [arc.sampling.temperature(t) for t in (1, 2, 3)] == [0.8, 0.8, 1.3]
    assert gsm8k.train.learning_rate == 7e-7 and gsm8k.train.batch_size == 16
    assert gsm8k.task.held_out == 1000 and gsm8k.eval.maj_k == 32


def test_paper_cards_run_the_papers_method_by_default():
    """§2-3 of the paper, point by point; every departure is a named switch that these cards leave off."""
    gsm8k, arc, math = load_card("gsm8k"), load_card("arc_challenge"), load_card("math")
    for card in (gsm8k, math):
        assert card.train.retrain_with_held_out and card.task.held_out == 1000 and card.pairs.gold_winner == "always"
    for card in (gsm8k, arc, math):
        assert card.pairs.scheme == "cycle" and not card.pairs.drop_off_format
        # "Too long" is overflowing the context (§3.1): generate to Llama-2's 4,096, drop only what overflows,
        # and train on every pair that fits it.
        assert card.sampling.max_new_tokens is None and card.pairs.max_tokens is None
        assert card.sampling.max_model_len == card.train.max_length == 4096
        assert card.eval.temperature == 0.8 and card.train.batch_size == 16 and card.train.beta == 0.1
    assert gsm8k.pairs.max_pairs == arc.pairs.max_pairs == 60000  # GSM8K's footnote 4: "around 60k"
    assert math.pairs.max_pairs == 75000  # §3.3: "around 75k example pairs"
    assert (math.task.split_scheme, math.task.prompt) == ("paper", "paper")
    assert arc.task.train_subsets == ["ARC-Easy", "ARC-Challenge"] and arc.task.selection_split == "validation"
    assert arc.task.held_out == 0 and arc.train.max_steps == 4000 and arc.pairs.gold_winner == "never"
    assert gsm8k.train.max_steps == math.train.max_steps == 5000


def test_card_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_card("demo").sampling.num_samples = 3  # type: ignore[misc]


def test_dotted_overrides_are_typed():
    card = load_card("demo", ["sampling.num_samples=3", "sampling.temperatures=[0.5, 1.0]", "task.max_questions=null"])
    assert card.sampling.num_samples == 3
    assert card.sampling.temperatures == [0.5, 1.0]
    assert card.task.max_questions is None
    # YAML 1.1 reads 1e-4 as a string; a number field still takes it.
    assert load_card("demo", ["train.learning_rate=1e-4"]).train.learning_rate == 1e-4


def test_all_problems_reported_at_once_with_key_and_fix():
    with pytest.raises(CardError) as info:
        load_card("demo", ["sampling.num_sample=3", "task.held_out=many", "pairs=3", "sampling.engine=tpu"])
    message = str(info.value)
    assert "4 problems:" in message
    assert "unknown key sampling.num_sample; did you mean sampling.num_samples?" in message
    assert "task.held_out must be an integer, got 'many'" in message
    assert "pairs must be a mapping" in message
    assert "sampling.engine must be auto, vllm or transformers" in message
    assert "demo.yaml" in message  # names the card


def test_typo_in_a_card_file_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nsampling:\n  temperture: [0.8]\n")
    with pytest.raises(
        CardError, match=r"mine.yaml: unknown key sampling.temperture; did you mean sampling.temperatures"
    ):
        load_card(str(path))


def test_missing_card_file_and_missing_data_dir(tmp_path):
    with pytest.raises(CardError, match="no such card file; pass a path or one of the bundled cards: demo"):
        load_card(str(tmp_path / "nope.yaml"))
    with pytest.raises(CardError, match="task.data_dir .* is not a folder"):
        load_card("demo", [f"task.data_dir={tmp_path / 'missing'}"])


def test_relative_data_dir_is_read_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_card("math", ["task.data_dir=data"]).task.data_dir == "data"  # bundled card, cwd-relative folder


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(CardError, match="is not KEY=VALUE"):
        load_card("demo", ["sampling.num_samples"])


def test_card_hash_changes_with_any_key():
    assert load_card("demo").sha256() == load_card("demo").sha256()
    assert load_card("demo").sha256() != load_card("demo", ["seed=1"]).sha256()
    assert Card().sha256() != load_card("demo").sha256()


def test_objective_and_ablations_are_checked_and_sft_gold_needs_gold_solutions():
    assert load_card("demo").train.objective == "dpo_nll" and load_card("demo").ablations == []
    card = load_card("gsm8k", ["train.objective=sft_gold", "ablations=[dpo,sft_winners]"])
    assert card.train.objective == "sft_gold" and card.ablations == ["dpo", "sft_winners"]
    with pytest.raises(CardError) as error:
        load_card("demo", ["train.objective=sft", "ablations=[dpo,star]"])
    assert "train.objective has 'sft'" in str(error.value) and "ablations has 'star'" in str(error.value)
    assert "dpo_nll, dpo, dpo_norm_nll, sft_winners, sft_gold" in str(error.value)
    for overrides in (["train.objective=sft_gold"], ["ablations=[sft_gold]"]):
        with pytest.raises(
            CardError, match="task arc_challenge has none .* choose dpo_nll, dpo, dpo_norm_nll or sft_winners"
        ):
            load_card("arc_challenge", overrides)


def test_a_renamed_card_key_still_loads_and_names_the_new_one(tmp_path, caplog):
    card_file = tmp_path / "old.yaml"
    card_file.write_text("train:\n  eval_every: 7\nsampling:\n  kv_cache_gb: 4\n")
    with caplog.at_level("WARNING"):
        card = load_card(str(card_file), ["train.eval_questions=3"])
    assert (card.train.select_every, card.train.select_questions, card.resources.kv_cache_gb) == (7, 3, 4)
    assert "card key train.eval_every is now train.select_every" in caplog.text
    assert "card key sampling.kv_cache_gb is now resources.kv_cache_gb" in caplog.text


def test_resources_are_not_part_of_a_runs_identity(tmp_path, caplog):
    """A new KV-cache size or GPU memory share resumes the run (and says so); a new temperature does not."""
    from irpo.card import BUILD_SECTIONS, TRAIN_SECTIONS
    from irpo.runs import RunFolder

    card = load_card("demo")
    moved = load_card(
        "demo",
        [
            "resources.kv_cache_gb=6",
            "resources.gpu_memory_utilization=0.5",
            "resources.tensor_parallel_size=4",
            "resources.sampling_backend=ray",
            "resources.ray_engines=8",
        ],
    )
    assert card.sha256(BUILD_SECTIONS) == moved.sha256(BUILD_SECTIONS) and card.sha256(TRAIN_SECTIONS) == moved.sha256(
        TRAIN_SECTIONS
    )
    assert card.sha256(BUILD_SECTIONS) != load_card("demo", ["sampling.temperatures=[1.0]"]).sha256(BUILD_SECTIONS)
    run = RunFolder.for_card(card, tmp_path)
    run.freeze_card(card, BUILD_SECTIONS)
    with caplog.at_level("INFO"):
        run.freeze_card(moved, BUILD_SECTIONS)  # no CardError: the run goes on
    assert (
        "resources changed (resources.gpu_memory_utilization: 0.9 -> 0.5, resources.kv_cache_gb: 2 -> 6, "
        "resources.ray_engines: 1 -> 8, resources.sampling_backend: 'local' -> 'ray', "
        "resources.tensor_parallel_size: 1 -> 4)" in caplog.text
    )
    # Where they reach vLLM: every engine the project starts takes them from vllm_device_settings.
    from irpo.models import ResolvedModel
    from irpo_eval.evaluate import EvalSettings, result_key

    model = ResolvedModel("m", tmp_path, "sha")
    assert result_key(model, EvalSettings.from_card(card)) == result_key(model, EvalSettings.from_card(moved))
    assert EvalSettings.from_card(moved).data_parallel_size == 8  # irpo eval's copies on the cluster


def test_tensor_parallelism_without_gpus_is_refused_with_the_fix():
    """No GPU here: asking vLLM to split a model over GPUs fails before any engine starts, saying why."""
    import torch

    from irpo.engines import EngineError, vllm_device_settings

    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    with pytest.raises(EngineError, match="set both to 1 on CPU"):
        vllm_device_settings(2, 0.9, tensor_parallel_size=2)
    assert vllm_device_settings(2, 0.9)[0] is True  # on CPU


def test_ray_address_is_a_shorthand_and_the_backend_is_checked():
    from irpo.card_loader import CardError
    from irpo.command import resolve_card

    card = resolve_card("demo", ["resources.ray_engines=4"], ray_address="ray://head:10001")
    assert (card.resources.sampling_backend, card.resources.ray_address, card.resources.ray_engines) == (
        "ray",
        "ray://head:10001",
        4,
    )
    with pytest.raises(CardError, match=r"resources.sampling_backend must be local or ray, got 'dask'"):
        load_card("demo", ["resources.sampling_backend=dask"])
    with pytest.raises(CardError, match=r"resources.ray_engines must be at least 1, got 0"):
        load_card("demo", ["resources.ray_engines=0"])


def test_a_renamed_key_loads_with_a_note_and_keeps_every_runs_identity(tmp_path, caplog):
    """task.split became task.split_scheme (a split is train or test): a card or a run's frozen card.yaml
    with the old name loads, says so in one line, and hashes as it did, so no run is redone."""
    from irpo.card import BUILD_SECTIONS, TRAIN_SECTIONS
    from irpo.records import BuildManifest, TrainManifest

    old = tmp_path / "old.yaml"
    old.write_text("name: m\ntask:\n  name: math\n  split: prm800k\n")
    with caplog.at_level("WARNING"):
        card = load_card(str(old))
    assert card.task.split_scheme == "prm800k" and "card key task.split is now task.split_scheme" in caplog.text
    assert card.sha256() != load_card(str(old), ["task.split_scheme=paper"]).sha256()  # still in the hash
    # The previous release's run folder: its frozen card.yaml says task.split, its manifests hold its hashes.
    run = ASSETS / "previous_run" / "run_folders" / "prev"
    frozen = load_card(str(run / "card.yaml"))
    assert frozen.sha256(BUILD_SECTIONS) == BuildManifest.from_json(run / "iter_1" / "manifest.json").build_card_sha256
    trained = TrainManifest.from_json(run / "models" / "M_1" / "train_manifest.json")
    assert frozen.sha256(TRAIN_SECTIONS) == trained.train_card_sha256


def test_an_ablation_from_sft_is_trained_after_the_model_it_starts_from():
    from irpo.objectives import ABLATIONS, training_order

    assert training_order(["dpo_nll_from_sft", "dpo", "dpo_from_sft", "dpo"], "dpo_nll") == [
        "sft_winners",
        "dpo_nll_from_sft",
        "dpo",
        "dpo_from_sft",
    ]
    assert training_order(["sft_winners", "dpo_from_sft"], "dpo_nll") == ["sft_winners", "dpo_from_sft"]
    assert training_order(["dpo_nll", "dpo"], "dpo_nll") == ["dpo"]
    assert ABLATIONS["dpo_from_sft"].label == "DPO, from M_1-sft_winners"
    card = load_card("gsm8k", ["ablations=[dpo_from_sft, dpo_nll_from_sft]"])
    assert card.ablations == ["dpo_from_sft", "dpo_nll_from_sft"]
