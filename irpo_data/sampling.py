"""Sample N chain-of-thought answers per question, grade them, write parquet shards.

Input: the task, its questions and their rendered prompts. Output: `samples/part-00000.parquet`,
`part-00001.parquet`, ... with one row per generation:

    question_id="demo/train/3", sample_idx=5, prompt="<|im_start|>user ...", gold="28",
    completion="4 boxes of 7 is 28. The answer is 28.", n_tokens=17, finish_reason="stop",
    answer="28", correct=True, well_formed=True, grading_timed_out=False

Shard k holds questions [k*S, (k+1)*S), written under a temporary name and renamed, so a kill
loses at most the shard in flight and a rerun skips every finished shard. Each question has
its own seed (from the card's seed and its id), so a resumed run samples exactly what an
uninterrupted one would. The shard size is pinned too: it fixes which prompts are batched
together, and in bf16 the batch changes the numerics (measured: shards of 2 and of 5 questions
gave different samples for the same seeds). `settings.json` pins what the shards were made with; a rerun with
other settings is refused rather than mixing two kinds of samples.

Engines (irpo.engines): vLLM sends each question as one request with `n=N`; transformers `generate`
is the fallback when vLLM is not installed. With `resources.sampling_backend: ray`, the missing
shards go to a pool of engines on a Ray cluster (irpo_data.ray_sampling), each writing its shards
here as this process would (`make_engine` picks).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from irpo import timing
from irpo.engines import Engine, SamplingParams, local_engine, question_seed
from irpo.errors import RunFolderError
from irpo.grading import GRADE_TIMEOUT_S, grade_many
from irpo.prompts import Generation
from irpo.reading import RecordError, read_json, read_parquet
from irpo.runs import set_aside, write_json_atomic, write_parquet_atomic
from irpo.tasks import Question, Task

log = logging.getLogger(__name__)

SAMPLE_SCHEMA = {
    "question_id": pl.String,
    "sample_idx": pl.Int32,
    "prompt": pl.String,
    "gold": pl.String,
    "completion": pl.String,
    "n_tokens": pl.Int32,
    "finish_reason": pl.String,
    "answer": pl.String,
    "correct": pl.Boolean,
    "well_formed": pl.Boolean,
    "grading_timed_out": pl.Boolean,  # verification ran past grading.GRADE_TIMEOUT_S: counted wrong
    # The ids the engine was given, and the ids it returned (with the stop token when it stopped on
    # one; an answer cut at a plain prompt's run-on marker ends before it): what the trainer scores.
    "prompt_token_ids": pl.List(pl.Int32),
    "completion_token_ids": pl.List(pl.Int32),
}
ID_COLUMNS = ("prompt_token_ids", "completion_token_ids")


@dataclass(frozen=True)
class ShardJob:
    """Everything a shard's sampler needs but the engine: what the local path and Ray workers share."""

    task: Task
    shards: list[list[Question]]  # shard k's questions
    prompts: list[list[str]]  # and their rendered prompts (the samples' text column)
    params: SamplingParams
    out_dir: Path
    grading_workers: int | None = None  # processes for math-verify; None: every core this process may use
    prompt_ids: list[list[list[int]]] | None = None  # shard k's prompts as the engine is given them

    def sample_shard(self, engine: "Engine", k: int) -> tuple[int, int]:
        """Sample, grade and write shard k; (generations, tokens) made."""
        questions, prompts, ids = self.shards[k], self.prompts[k], self.prompt_ids[k]
        outputs = engine.generate(ids, self.params, [question_seed(self.params.seed, q.question_id) for q in questions])
        rows = write_shard(
            self.task, questions, prompts, outputs, shard_path(self.out_dir, k), self.grading_workers, ids
        )
        return len(rows["completion"]), sum(rows["n_tokens"])


def make_engine(model_path: Path, config, seed: int, trust_remote_code: bool = False, resources=None) -> Engine:
    """The build's engine: irpo.engines.local_engine, or with `resources.sampling_backend: ray` a pool of
    them on a Ray cluster."""
    if resources is not None and resources.sampling_backend == "ray":
        from irpo_data.ray_sampling import ray_engine  # here: it builds on this module (a circle at the top)

        return ray_engine(model_path, config, seed, trust_remote_code, resources)
    return local_engine(model_path, config, seed, trust_remote_code, resources)


@dataclass
class SamplingReport:
    shards_total: int
    shards_done_before: int  # found complete on disk and skipped
    generations: int  # made in this run
    tokens: int  # generated in this run
    seconds: float  # wall time of this run's sampling, grading and writing


def sample_answers(
    task: Task,
    questions: list[Question],
    prompts: list[str],
    engine: Engine,
    params: SamplingParams,
    out_dir: Path,
    questions_per_shard: int,
    fixed_settings: dict,
    progress: bool = True,
    *,
    prompt_ids: list[list[int]],
) -> SamplingReport:
    """Write graded samples for every question into `out_dir`, resuming finished shards.

    `prompts` are the texts (the samples' `prompt` column); `prompt_ids` the same prompts as the engine
    is given them (irpo.prompts.encode_prompts), recorded beside each answer's ids."""
    from tqdm.auto import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".tmp-*"):  # the shard in flight when a previous run was killed
        stale.unlink()
    _set_aside_samples_without_ids(out_dir)
    settings, hardware = engine.describe_for(out_dir)
    _pin_settings(
        out_dir, {**fixed_settings, **settings, "params": params.__dict__, "questions_per_shard": questions_per_shard}
    )
    starts = range(0, len(questions), questions_per_shard)
    job = ShardJob(
        task,
        [questions[i : i + questions_per_shard] for i in starts],
        [prompts[i : i + questions_per_shard] for i in starts],
        params,
        out_dir,
        prompt_ids=[prompt_ids[i : i + questions_per_shard] for i in starts],
    )
    todo = [k for k in range(len(job.shards)) if not _finished(shard_path(out_dir, k), job.shards[k], params)]
    done_before = len(job.shards) - len(todo)
    if done_before:
        log.info("resuming: %d of %d shards already in %s", done_before, len(job.shards), out_dir)
    if todo:
        _note_hardware(out_dir, hardware, resuming=bool(done_before))
    already = len(questions) - sum(len(job.shards[k]) for k in todo)
    bar = tqdm(total=len(questions), initial=already, desc="sampling", unit="q", disable=not progress)
    start, generations, tokens = time.perf_counter(), 0, 0
    for k, made, n_tokens in engine.sample_shards(job, todo):
        generations += made
        tokens += n_tokens
        elapsed = time.perf_counter() - start
        bar.update(len(job.shards[k]))
        bar.set_postfix(gen_s=f"{generations / elapsed:.1f}", tok_s=f"{tokens / elapsed:.0f}")
    bar.close()
    return SamplingReport(len(job.shards), done_before, generations, tokens, time.perf_counter() - start)


def write_shard(
    task: Task,
    questions: list[Question],
    prompts: list[str],
    outputs: list[list[Generation]],
    path: Path,
    workers: int | None = None,
    prompt_ids: list[list[int]] | None = None,
) -> dict:
    """Grade one shard's generations (the engine's output) and write them to `path`, atomically."""
    with timing.phase("grading"):
        rows = _graded_rows(task, questions, prompts, outputs, workers, prompt_ids)
    write_parquet_atomic(pl.DataFrame(rows, schema=SAMPLE_SCHEMA), path)
    return rows


def _graded_rows(task, questions, prompts, outputs, workers=None, prompt_ids=None) -> dict[str, list]:
    rows: dict[str, list] = {name: [] for name in SAMPLE_SCHEMA}
    prompt_ids = prompt_ids if prompt_ids is not None else [[] for _ in prompts]
    ids_of = {q.question_id: ids for q, ids in zip(questions, prompt_ids, strict=True)}
    flat = [
        (q, p, idx, gen) for q, p, gens in zip(questions, prompts, outputs, strict=True) for idx, gen in enumerate(gens)
    ]
    texts = [utf8_safe(gen.text) for _, _, _, gen in flat]
    grades = grade_many(task, texts, [q.gold for q, _, _, _ in flat], workers)  # math-verify on every core
    for (question, prompt, idx, gen), text, result in zip(flat, texts, grades):
        values = {
            "question_id": question.question_id,
            "sample_idx": idx,
            "prompt": prompt,
            "gold": question.gold,
            "completion": text,
            "n_tokens": gen.n_tokens,
            "finish_reason": gen.finish_reason,
            "answer": result.answer,
            "correct": result.correct if question.has_gold else None,  # None: no gold to judge by (labelled by vote)
            "well_formed": result.well_formed,
            "grading_timed_out": result.timed_out,
            "prompt_token_ids": list(ids_of[question.question_id]),
            "completion_token_ids": list(gen.token_ids),
        }
        for name, value in values.items():
            rows[name].append(value)
    timed_out = sorted({q.question_id for (q, _, _, _), g in zip(flat, grades) if g.timed_out})
    if timed_out:
        log.warning(
            "grading ran out of time (%.0f s) on %d answers, counted wrong; questions: %s",
            GRADE_TIMEOUT_S,
            sum(g.timed_out for g in grades),
            ", ".join(timed_out),
        )
    return rows


def utf8_safe(text: str) -> str:
    """`text` with lone surrogates (which no UTF-8 file can hold) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _note_hardware(out_dir: Path, here: dict, resuming: bool) -> None:
    """Record the machine of the first shards; say so when later ones are sampled on another.

    Samples are reproducible on one machine, not across machines (bf16 kernels differ between CPUs),
    so a resume elsewhere is allowed, and its new shards may differ from what the first machine
    would have made.
    """
    path = out_dir / "hardware.json"
    if resuming and path.is_file():
        try:
            before = read_json(path)
        except RecordError as exc:  # it only says where the first shards came from
            log.warning("%s; writing it anew", exc)
            before = here
        changed = sorted(k for k in set(before) | set(here) if before.get(k) != here.get(k))
        if changed:
            log.warning(
                "resuming on other hardware (%s differ): the new shards may differ from what the first machine would "
                "have sampled; the finished ones are kept",
                ", ".join(f"{k}: {before.get(k)!r} -> {here.get(k)!r}" for k in changed),
            )
        return
    write_json_atomic(path, here)


def shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"part-{index:05d}.parquet"


def _pin_settings(out_dir: Path, settings: dict) -> None:
    path = out_dir / "settings.json"
    settings = json.loads(json.dumps(settings, default=str))
    if path.is_file():
        before = read_json(path)
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed and any(out_dir.glob("part-*.parquet")):
            raise RunFolderError(
                f"{out_dir} holds samples made with other settings ({', '.join(changed)} differ); "
                "delete that folder to resample, or run with the settings it was made with"
            )
    write_json_atomic(path, settings)


def _set_aside_samples_without_ids(out_dir: Path) -> None:
    """Shards sampled before irpo recorded token ids cannot be trained exactly: the folder is set
    aside (kept) and the iteration sampled again (README, "What a run writes")."""
    shards = sorted(out_dir.glob("part-*.parquet"))
    if not shards:
        return
    try:
        columns = pl.read_parquet_schema(shards[0])
    except Exception:  # noqa: BLE001  (an unreadable shard is _finished's to set aside)
        return
    if not set(ID_COLUMNS) <= set(columns):
        set_aside(out_dir, f"{out_dir} was sampled by an irpo that kept no token ids; sampling the iteration again")
        out_dir.mkdir()


def _finished(path: Path, questions: list[Question], params: SamplingParams) -> bool:
    """Whether shard `path` is on disk whole: readable, of the sample columns, N rows for each of its
    questions. One that is not (truncated, emptied, replaced) is set aside and sampled again."""
    if not path.is_file():
        return False
    expected = sorted(q.question_id for q in questions for _ in range(params.num_samples))
    try:
        frame = read_parquet(
            path, {k: SAMPLE_SCHEMA[k] for k in ("question_id", "sample_idx", "completion")}, only=True
        )
        found = sorted(frame["question_id"].to_list())
        why = None if found == expected else f"{len(found)} samples, not the {len(expected)} of its questions"
    except RecordError as exc:
        why = exc.reason
    if why is None:
        return True
    set_aside(path, f"sample shard {path.name} is not whole ({why}); sampling it again")
    return False


def read_samples(out_dir: Path) -> pl.DataFrame:
    files = sorted(out_dir.glob("part-*.parquet"))
    if not files:
        raise RunFolderError(f"no sample shards in {out_dir}")
    frames = [read_parquet(f, {"question_id": pl.String, "completion": pl.String}) for f in files]
    # Shards written before grading had a deadline have no timeout column: none of theirs timed out.
    frames = [
        f if "grading_timed_out" in f.columns else f.with_columns(pl.lit(False).alias("grading_timed_out"))
        for f in frames
    ]
    return pl.concat(frames)
