"""irpo.prompts on real tokenizers (the demo model's; the micro model of tests/assets/previous_run,
which has no chat template): the ids a build records are what the trainer scores, a stop string cuts
ids and text alike, a base model's run-on is cut before it is graded. The families' own rules:
tests/test_families.py."""

from __future__ import annotations

import hashlib

import polars as pl
import pytest
from conftest import ASSETS
from transformers import AutoTokenizer

from irpo.card import PairsConfig
from irpo.grading import grade
from irpo.pairs import build_pairs
from irpo.prompts import cut_at_stop, encode_answers, encode_prompts, end_of_turn_id, prompt_format, stopped
from irpo.tasks import get_task
from irpo_data.publish import fingerprint, save_pairs
from irpo_data.sampling import SAMPLE_SCHEMA
from irpo_train.data import tokenize_pairs

MICRO = ASSETS / "previous_run" / "base_model"
TASK = get_task("demo")


@pytest.fixture(scope="module")
def tokenizer(demo_tokenizer):
    return demo_tokenizer  # byte-level BPE over all bytes: any text decodes back as it was


def test_a_model_without_a_chat_template_gets_plain_prompts_stopped_at_the_next_question():
    tokenizer = AutoTokenizer.from_pretrained(MICRO)
    fmt = prompt_format(MICRO, tokenizer, TASK, "auto")
    assert (fmt.style, fmt.stop_strings) == ("plain", ("\nQuestion:",))
    assert fmt.end_of_turn_id == tokenizer.eos_token_id == end_of_turn_id(tokenizer)
    with pytest.raises(Exception, match="has no chat template; use plain"):
        prompt_format(MICRO, tokenizer, TASK, "chat")


def test_a_base_models_run_on_is_cut_before_grading_and_its_ids_match_its_text(tokenizer):
    """The answer, then the model's own next exemplar with another answer: graded by the first."""
    answer = "We add 2 and 3. The answer is 5."
    run_on = answer + "\nQuestion: What is 3 + 4?\nSolution: 3 + 4 = 7. The answer is 7.\nQuestion: And"
    ids = tokenizer(run_on, add_special_tokens=False).input_ids
    generation = stopped(ids, {tokenizer.eos_token_id}, ("\nQuestion:",), tokenizer)
    assert generation.text == answer and generation.finish_reason == "stop"
    assert tokenizer.decode(list(generation.token_ids)) == answer  # the ids recorded are the text's
    assert grade(TASK, generation.text, "5").correct and not grade(TASK, run_on, "5").correct
    # vLLM's way: its text stops before the marker, its ids go on to the token that completed it.
    ids_to_stop = tokenizer(answer + "\nQuestion:", add_special_tokens=False).input_ids
    kept, text = cut_at_stop(ids_to_stop, answer, tokenizer)
    assert text == answer and kept == ids_to_stop[: len(kept)] and len(kept) < len(ids_to_stop)


def test_one_bos_whatever_the_text_starts_with():
    tokenizer = AutoTokenizer.from_pretrained(MICRO)
    bos = tokenizer.bos_token_id
    plain, with_bos = encode_prompts(tokenizer, ["Question: 2 + 3?", "<s>Question: 2 + 3?"])
    assert plain.count(bos) <= 1 and with_bos.count(bos) == 1 and with_bos[0] == bos


def _samples(tokenizer, sampled_ids: list[int], text: str) -> pl.DataFrame:
    """A samples table of one question: a right answer sampled as `sampled_ids`, and a wrong one."""
    prompt = "Question: Tom has 20 apples and gets 8 more. How many?"
    wrong = "The answer is 27."
    rows = {
        "question_id": ["q/0", "q/0"],
        "sample_idx": [0, 1],
        "prompt": [prompt, prompt],
        "gold": ["28", "28"],
        "completion": [text, wrong],
        "n_tokens": [len(sampled_ids), 9],
        "finish_reason": ["stop", "stop"],
        "answer": ["28", "27"],
        "correct": [True, False],
        "well_formed": [True, True],
        "grading_timed_out": [False, False],
        "prompt_token_ids": encode_prompts(tokenizer, [prompt, prompt]),
        "completion_token_ids": [sampled_ids, encode_answers(tokenizer, [wrong], tokenizer.eos_token_id)[0]],
    }
    return pl.DataFrame(rows, schema=SAMPLE_SCHEMA)


def test_the_trainer_scores_the_sampled_ids_where_the_text_would_tokenize_otherwise(tokenizer, tmp_path):
    """An engine may emit a text as tokens its tokenizer would merge: "28" as "2" then "8". The pairs
    and the trainer's rows keep the sampled ids; tokenizing the text again would give other ids."""
    text = "So 20 + 8 = 28. The answer is 28."
    merged = tokenizer(text, add_special_tokens=False).input_ids
    by_character = [t for ch in text for t in tokenizer(ch, add_special_tokens=False).input_ids]
    assert tokenizer.decode(by_character) == text and by_character != merged  # the premise
    sampled = [*by_character, tokenizer.eos_token_id]
    pairs, _ = build_pairs(_samples(tokenizer, sampled, text), PairsConfig(pairs_per_question=1, max_tokens=200))
    save_pairs(pairs, 1, tmp_path / "pairs")
    from datasets import load_from_disk

    rows = tokenize_pairs(load_from_disk(str(tmp_path / "pairs"))["train"], 1024).rows
    assert rows[0]["chosen_ids"] == sampled and rows[0]["chosen_ids"] != [*merged, tokenizer.eos_token_id]
    assert pairs["chosen"][0] == text  # TRL's text columns, as they were


def test_fingerprints_of_tables_without_ids_are_the_old_ones_and_ids_count():
    text_only = pl.DataFrame({"question_id": ["q/0"], "prompt": ["p"], "chosen": ["c"], "rejected": ["r"]})
    assert fingerprint(text_only) == hashlib.sha256(text_only.write_csv().encode()).hexdigest()  # as before ids
    with_ids = text_only.with_columns(pl.Series("chosen_token_ids", [[1, 2, 3]], dtype=pl.List(pl.Int32)))
    other = text_only.with_columns(pl.Series("chosen_token_ids", [[1, 23]], dtype=pl.List(pl.Int32)))
    assert len({fingerprint(text_only), fingerprint(with_ids), fingerprint(other)}) == 3


def test_shards_sampled_without_ids_are_set_aside_and_sampled_again(tmp_path, caplog):
    from irpo_data.sampling import _set_aside_samples_without_ids

    samples = tmp_path / "iter_1" / "samples"
    samples.mkdir(parents=True)
    pl.DataFrame({"question_id": ["q/0"], "completion": ["old"]}).write_parquet(samples / "part-00000.parquet")
    with caplog.at_level("WARNING"):
        _set_aside_samples_without_ids(samples)
    assert samples.is_dir() and not any(samples.iterdir())
    assert (tmp_path / "iter_1" / "samples.stale-1" / "part-00000.parquet").is_file()
    assert "kept no token ids; sampling the iteration again" in caplog.text


def _sentencepiece_like():
    """A Metaspace BPE tokenizer, as Llama-2's, Mistral's and Phi-3's decode: "▁" for spaces, and decoding
    an answer alone drops its leading space, which vLLM's text (decoded after the prompt) keeps."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from irpo.tasks.demo import generate_rows

    texts = [r["question"] + " " + r["solution"] + "\nQuestion: Solution:" for r in generate_rows("train")]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    # "\n" a token of its own, as SentencePiece's byte fallback <0x0A> is: no merge crosses a line.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.Metaspace()]
    )
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")


def test_a_vllm_answer_cut_at_a_stop_string_keeps_its_text_with_a_sentencepiece_tokenizer():
    """vLLM's output for a plain prompt that ran on: text " We add ... is 5." (with the leading space its
    decoding after the prompt keeps), ids through the tokens of "\\nQuestion:". The answer is cut on the
    tokenizer's own decoding: neither emptied nor cut elsewhere."""
    from types import SimpleNamespace

    from irpo.engines import _generation

    tokenizer = _sentencepiece_like()
    answer = "Tom has 4 boxes with 7 pencils in each, so 4 * 7 = 28. The answer is 28."
    ids = tokenizer(answer + "\nQuestion: Tom", add_special_tokens=False).input_ids
    output = SimpleNamespace(text=" " + answer, token_ids=ids, stop_reason="\nQuestion:", finish_reason="stop")
    generation = _generation(output, tokenizer, ("\nQuestion:",))
    assert tokenizer.decode(ids).startswith(answer)  # the premise: decoded alone, no leading space
    assert generation.text == answer and tokenizer.decode(list(generation.token_ids)) == answer
    assert 0 < generation.n_tokens < len(ids) and grade(TASK, generation.text, "28").correct


def test_generation_left_open_stops_at_the_cards_context_not_the_models():
    from types import SimpleNamespace

    import torch

    from irpo.prompts import context_left

    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=32768))  # Qwen2.5 reads 32k
    batch = torch.zeros((2, 300), dtype=torch.long)
    assert context_left(model, batch, 4096) == 3796 and context_left(model, batch) == 32468
