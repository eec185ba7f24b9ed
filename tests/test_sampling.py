"""Sampling with the real demo model: shard schema, grading, kill and resume, both engines."""

from __future__ import annotations

import polars as pl
import pytest
from conftest import require_vllm

from irpo.card import SamplingConfig
from irpo.engines import Engine, SamplingParams, TransformersEngine, VLLMEngine
from irpo.errors import RunFolderError
from irpo.grading import grade
from irpo.hardware import resolve_dtype
from irpo.prompts import Prompts, render_prompts
from irpo.tasks import get_task
from irpo_data.sampling import SAMPLE_SCHEMA, read_samples, sample_answers

TASK = get_task("demo")
QUESTIONS = TASK.load("train").questions[:5]
PARAMS = SamplingParams(num_samples=3, temperature=0.8, top_p=1.0, max_new_tokens=40, seed=0)


class KilledAfter(Engine):
    """Wraps a real engine and raises KeyboardInterrupt (Ctrl-C) on its n-th generate call."""

    def __init__(self, engine, calls: int):
        self.engine, self.calls, self.name = engine, calls, engine.name

    def generate(self, prompts, params, seeds):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        return self.engine.generate(prompts, params, seeds)

    def settings(self):
        return self.engine.settings()


@pytest.fixture(scope="module")
def hf_engine(demo_model):
    return TransformersEngine(demo_model.path, "float32", batch_size=4)


@pytest.fixture(scope="module")
def vllm_engine(demo_model):
    require_vllm()
    return VLLMEngine(demo_model.path, resolve_dtype("auto"), 0, SamplingConfig(max_model_len=1024))


def run(engine, out_dir, prompts: Prompts, params=PARAMS, shard=2):
    return sample_answers(
        TASK, QUESTIONS, prompts.texts, engine, params, out_dir, shard, {"data": "x"}, False, prompt_ids=prompts.ids
    )


def demo_prompts(tokenizer) -> Prompts:
    return Prompts.of(TASK, QUESTIONS, tokenizer, "auto")


def test_prompts_use_the_chat_template(demo_tokenizer):
    prompt = render_prompts(TASK, QUESTIONS[:1], demo_tokenizer)[0]
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    assert QUESTIONS[0].text in prompt


@pytest.mark.parametrize("engine_fixture", ["hf_engine", "vllm_engine"])
def test_shards_hold_every_graded_generation(engine_fixture, request, demo_tokenizer, tmp_path):
    engine = request.getfixturevalue(engine_fixture)
    prompts = demo_prompts(demo_tokenizer)
    report = run(engine, tmp_path, prompts)
    assert sorted(p.name for p in tmp_path.glob("part-*")) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    samples = read_samples(tmp_path)
    assert samples.schema == pl.Schema(SAMPLE_SCHEMA)
    assert samples.height == report.generations == 15
    assert samples.group_by("question_id").len()["len"].to_list() == [3] * 5
    assert set(samples["finish_reason"]) <= {"stop", "length"}
    assert samples["n_tokens"].max() <= 40 and report.tokens == samples["n_tokens"].sum()
    truncated = samples.filter(pl.col("finish_reason") == "length")
    assert (truncated["n_tokens"] == 40).all()
    ids_of = {q.question_id: ids for q, ids in zip(QUESTIONS, prompts.ids)}
    for row in samples.iter_rows(named=True):  # stored grades are exactly grade()'s
        stored = (row["answer"], row["correct"], row["well_formed"], row["grading_timed_out"])
        assert stored == tuple(grade(TASK, row["completion"], row["gold"]).__dict__.values())
        # The ids the engine was given and returned: what the trainer scores. An answer that stopped
        # ends with the end-of-turn token (here the EOS), and its ids decode to its text.
        assert row["prompt_token_ids"] == ids_of[row["question_id"]]
        ids = row["completion_token_ids"]
        assert len(ids) == row["n_tokens"]
        if row["finish_reason"] == "stop":
            assert ids[-1] == demo_tokenizer.eos_token_id
        assert demo_tokenizer.decode(ids, skip_special_tokens=True) == row["completion"]


@pytest.mark.parametrize("engine_fixture", ["hf_engine", "vllm_engine"])
def test_kill_mid_sampling_keeps_finished_shards_and_resume_matches_uninterrupted(
    engine_fixture, request, demo_tokenizer, tmp_path
):
    engine = request.getfixturevalue(engine_fixture)
    prompts = demo_prompts(demo_tokenizer)
    with pytest.raises(KeyboardInterrupt):
        run(KilledAfter(engine, calls=1), tmp_path / "killed", prompts)
    assert [p.name for p in (tmp_path / "killed").glob("part-*")] == ["part-00000.parquet"]
    assert not list((tmp_path / "killed").glob(".tmp-*"))
    resumed = run(engine, tmp_path / "killed", prompts)
    assert resumed.shards_done_before == 1 and resumed.generations == 9
    run(engine, tmp_path / "straight", prompts)
    assert read_samples(tmp_path / "killed").equals(read_samples(tmp_path / "straight"))


def test_vllm_samples_are_reproducible_and_seed_dependent(vllm_engine, demo_tokenizer, tmp_path):
    prompts = demo_prompts(demo_tokenizer)
    run(vllm_engine, tmp_path / "a", prompts)
    run(vllm_engine, tmp_path / "b", prompts)
    run(vllm_engine, tmp_path / "c", prompts, params=SamplingParams(3, 0.8, 1.0, 40, seed=1))
    a, b, c = (read_samples(tmp_path / x)["completion"] for x in "abc")
    assert a.equals(b) and not a.equals(c)


def test_a_closed_vllm_engine_gives_its_memory_back_and_starts_again(vllm_engine, demo_tokenizer, tmp_path):
    """vLLM gc.freeze()s what it allocates at start; close() shuts it down, so the stages after a
    build get the memory back, and the next generate starts a fresh engine with the same samples."""
    from irpo.timing import resident_kb

    prompts = demo_prompts(demo_tokenizer)
    run(vllm_engine, tmp_path / "a", prompts)
    alive = resident_kb()
    vllm_engine.close()
    assert alive - resident_kb() > 1_000_000  # kB: the weights and the KV cache came back
    run(vllm_engine, tmp_path / "b", prompts)  # a new engine in the same process
    assert read_samples(tmp_path / "a")["completion"].equals(read_samples(tmp_path / "b")["completion"])


def test_rerun_with_other_settings_is_refused(hf_engine, demo_tokenizer, tmp_path):
    prompts = demo_prompts(demo_tokenizer)
    run(hf_engine, tmp_path, prompts, params=SamplingParams(1, 0.8, 1.0, 8, 0))
    with pytest.raises(
        RunFolderError, match=r"holds samples made with other settings \(params differ\); delete that folder"
    ):
        run(hf_engine, tmp_path, prompts, params=SamplingParams(2, 0.8, 1.0, 8, 0))
