"""`irpo data build --iter T`: one iteration's pair dataset, from card to runs/NAME/iter_T/.

    card -> question_sets (training questions, held-out ones, the 13-gram test-overlap check)
         -> prompts -> samples/ (sampling: N answers each, graded, sharded, resumable)
         -> gold.parquet (each question's gold solution, graded by the reward's grader)
         -> build_pairs -> pairs/ + README.md + manifest.json + contaminated.txt (publish)

The sampling model is the card's base model at T=1 and runs/NAME/models/M_{T-1} after, unless
`model` names another. With train.retrain_with_held_out (the paper's), the held-out questions are
sampled and paired too: the trainer leaves them out to choose its step, then retrains with them.
A finished iteration (manifest present, same card, model and data) is not rebuilt; a killed one
resumes from its finished sample shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from irpo import __version__, timing
from irpo.card import ADDED_KEYS, BUILD_SECTIONS, Card
from irpo.grading import grade_many
from irpo.hardware import describe
from irpo.models import ResolvedModel, iteration_model, resolve_model
from irpo.pairs import build_pairs, example_pairs
from irpo.prompts import PromptFormat, Prompts, encode_answers, prompt_format
from irpo.reading import load_dataset_dir, read_json, read_parquet
from irpo.records import BuildManifest, IterationQuestions
from irpo.runs import RunFolder, set_aside, write_parquet_atomic, write_text_atomic
from irpo.slices import require_offline
from irpo.tasks import Question, Task, TaskError, split_held_out, task_from_config
from irpo.tracking import open_tracker
from irpo_data.contamination import overlapping_questions
from irpo_data.publish import dataset_card, fingerprint, save_pairs, write_card_and_manifest
from irpo_data.sampling import SamplingParams, make_engine, read_samples, sample_answers

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    iter_dir: Path
    manifest: BuildManifest
    skipped: bool  # True when an identical finished build was found and kept


@dataclass
class QuestionSets:
    """The questions of one card, as every stage sees them."""

    train: list[Question]  # training questions (after task.max_questions and the held-out split)
    held_out: list[Question]  # checkpoint choice: held-out training questions, or task.selection_split
    sampled: list[Question]  # what an iteration samples: train, plus held_out when the trainer retrains on them
    source: str  # where the rows came from
    skipped_rows: int  # rows with an empty gold answer (or a prompt exemplar)
    contaminated: list[str] | None  # loaded training questions that repeat a test question; None = not checked


def question_sets(card: Card, check_contamination: bool = False) -> QuestionSets:
    """The card's question sets; `check_contamination` (or task.drop_contaminated) loads the test split too."""
    task, cfg = task_from_config(card.task), card.task
    # pairs.label vote or mixed: training questions without a gold answer are kept (labelled by vote); the
    # held-out ones are drawn from those with gold (split_held_out), and the test split always needs it.
    loaded = task.load(cfg.train_split, cfg.data_dir, cfg.hub_id, keep_without_gold=card.pairs.label != "gold")
    questions, contaminated = loaded.questions, None
    if check_contamination or cfg.drop_contaminated:
        contaminated = _test_overlap(task, card, questions)
        if cfg.drop_contaminated and contaminated:
            flagged = set(contaminated)
            questions = [q for q in questions if q.question_id not in flagged]
            log.info(
                "task.drop_contaminated: %d training questions that repeat test questions are left out", len(flagged)
            )
    if cfg.selection_split is not None:  # the paper's ARC: the checkpoint is selected on the dev set
        train, held = questions, task.load(cfg.selection_split, cfg.data_dir, cfg.hub_id).questions
    else:
        train, held = split_held_out(questions, cfg.held_out)
    if cfg.max_questions is not None:
        train = train[: cfg.max_questions]
    joins_retrain = card.train.retrain_with_held_out and cfg.selection_split is None
    return QuestionSets(
        train, held, train + held if joins_retrain else train, loaded.source, loaded.skipped_empty_gold, contaminated
    )


def _test_overlap(task: Task, card: Card, questions: list[Question]) -> list[str] | None:
    try:
        test = task.load(card.task.test_split, card.task.data_dir, card.task.hub_id).questions
    except TaskError as exc:
        log.warning("could not check the training questions against the test set (%s); continuing", exc)
        return None
    return overlapping_questions(questions, test)


def sampling_model(card: Card, run: RunFolder, iteration: int, model: str | None) -> ResolvedModel:
    """The model iteration `iteration` samples from: --model if given, else M_{t-1} (irpo.models)."""
    if model is not None:
        return resolve_model(model, trust_remote_code=card.model.trust_remote_code)
    return iteration_model(card, run, iteration)


def iteration_prompts(task: Task, sets: QuestionSets, tokenizer, style: str, max_model_len: int):
    """(the prompts to sample, within the context; the ids of the questions left out; the questions table).

    The held-out questions get their prompts too, sampled or not (the demo, ARC's validation split):
    the checks that choose the step give the model these very ids. iter_T/questions.parquet records the
    build's choices (which questions, in which role, with which prompts) for the trainer to read rather
    than make again."""
    prompts, too_long = Prompts.of(task, sets.sampled, tokenizer, style).fit_context(max_model_len)
    held_out, _ = Prompts.of(task, sets.held_out, tokenizer, style).fit_context(
        max_model_len, "left out of the held-out checks"
    )
    fitting = {
        q.question_id: (text, ids)
        for part in (prompts, held_out)
        for q, text, ids in zip(part.questions, part.texts, part.ids)
    }
    table = IterationQuestions.table(sets.train, sets.held_out, {q.question_id for q in sets.sampled}, fitting)
    return prompts, too_long, table


def questions_sha256(questions: list[Question], prompts: list[str]) -> str:
    digest = hashlib.sha256()
    for question, prompt in zip(questions, prompts):
        digest.update(json.dumps([question.question_id, question.gold, prompt]).encode())
    return digest.hexdigest()


def gold_table(task: Task, questions: list[Question], tokenizer, end_of_turn: int) -> pl.DataFrame:
    """One row per question with a gold solution: text, its token ids closed by the model's end-of-turn
    token, length in tokens (without that token, as before ids were kept), grade (irpo.pairs.GOLD_COLUMNS)."""
    with_gold = [q for q in questions if q.solution is not None]
    texts = [q.solution for q in with_gold]
    grades = grade_many(task, texts, [q.gold for q in with_gold])
    ids = encode_answers(tokenizer, texts, end_of_turn)
    return pl.DataFrame(
        {
            "question_id": [q.question_id for q in with_gold],
            "completion": texts,
            "n_tokens": [len(i) - 1 for i in ids],
            "correct": [g.correct for g in grades],
            "well_formed": [g.well_formed for g in grades],
            "completion_token_ids": ids,
        },
        schema={
            "question_id": pl.String,
            "completion": pl.String,
            "n_tokens": pl.Int32,
            "correct": pl.Boolean,
            "well_formed": pl.Boolean,
            "completion_token_ids": pl.List(pl.Int32),
        },
    )


def build_iteration(
    card: Card, iteration: int, runs_dir: str | Path = "runs", model: str | None = None, progress: bool = True
) -> BuildResult:
    """Build runs/NAME/iter_T/ (or keep it when it is already built from the same card and model)."""
    timing.take()  # this stage's phases only
    with timing.phase("model and questions"):  # resolving (converting, hashing) the model, the question sets
        job = _start(card, iteration, runs_dir, model)
    if isinstance(job, BuildResult):
        return job
    from transformers import AutoTokenizer  # here: `irpo data --help` and `irpo run`'s parent import this module

    tokenizer = AutoTokenizer.from_pretrained(job.model.path, trust_remote_code=card.model.trust_remote_code)
    job.format = prompt_format(job.model.path, tokenizer, job.task, card.task.prompt_style)
    log.info(
        "prompts: %s (%s); answers end with token %d; generation stops on %s%s",
        job.format.style,
        "the model's chat template" if job.format.style == "chat" else "plain text, no chat template",
        job.format.end_of_turn_id,
        list(job.format.stop_token_ids),
        f" and at {list(job.format.stop_strings)}" if job.format.stop_strings else "",
    )
    with timing.phase("sampling"):
        report, params, data_sha256 = _sample(job, tokenizer, progress)
    with timing.phase("pairs"):
        pairs, stats = _pair(job, tokenizer)
    manifest = publish(job, pairs, stats, report, params, data_sha256)
    with open_tracker(card, job.run, f"build-{iteration}") as tracker:
        tracker.log({f"build/{k}": v for k, v in manifest.counts.items()}, iteration)
        tracker.table(f"build/example_pairs_{iteration}", example_pairs(pairs), iteration)
    log.info(
        "iteration %d: %d pairs from %d questions -> %s", iteration, stats["pairs"], stats["questions_paired"], job.dir
    )
    return BuildResult(job.dir, manifest, skipped=False)


@dataclass
class BuildJob:
    card: Card
    iteration: int
    run: RunFolder
    dir: Path  # runs/NAME/iter_T
    model: ResolvedModel  # the sampling model
    identity: dict  # what the manifest must match for the build to be reused
    task: Task
    sets: QuestionSets
    too_long: list[str] = dataclasses.field(default_factory=list)  # question ids whose prompt overflows the context
    format: PromptFormat | None = None  # the sampling model's (irpo.prompts)


def _has_token_ids(pairs_dir: Path) -> bool:
    return "prompt_token_ids" in load_dataset_dir(pairs_dir)["train"].column_names


def _start(card: Card, iteration: int, runs_dir, model: str | None) -> BuildJob | BuildResult:
    """The job, or the finished build when one from the same card and model is there."""
    if iteration < 1:
        raise TaskError(f"--iter must be 1 or more, got {iteration}: iteration 1 samples from the base model")
    require_offline(card, "irpo data build")
    run = RunFolder.for_card(card, runs_dir)
    run.freeze_card(card, BUILD_SECTIONS)
    resolved = sampling_model(card, run, iteration, model)
    identity = {"build_card_sha256": card.sha256(BUILD_SECTIONS), "weights_sha256": resolved.weights_sha256}
    path = run.manifest(iteration)
    if path.is_file():
        manifest = BuildManifest.from_json(path)
        same = (manifest.build_card_sha256, manifest.weights_sha256) == tuple(identity.values())
        if same and run.pairs(iteration).is_dir():
            if _has_token_ids(run.pairs(iteration)) or run.train_manifest(iteration).is_file():
                log.info(
                    "iteration %d already built in %s (same card and model); nothing to do", iteration, path.parent
                )
                return BuildResult(path.parent, manifest, skipped=True)
            # Built by an irpo that kept only text, and nothing is trained on it yet: the trainer scores token
            # ids, so it is built again (its samples and pairs are set aside, not deleted).
            log.warning("iteration %d was built by an irpo that kept no token ids: building it again", iteration)
        # About to be rebuilt: no manifest may vouch for the old pairs, which stay until the new ones replace them.
        set_aside(path, f"iteration {iteration}'s pairs were built from another card or model")
    sets = question_sets(card, check_contamination=True)
    log.info(
        "iteration %d: sampling %d questions (%d training, %d held out%s) from %s",
        iteration,
        len(sets.sampled),
        len(sets.train),
        len(sets.held_out),
        ", sampled too" if len(sets.sampled) > len(sets.train) else "",
        sets.source,
    )
    return BuildJob(
        card, iteration, run, run.iteration(iteration), resolved, identity, task_from_config(card.task), sets
    )


def _sample(job: BuildJob, tokenizer, progress: bool):
    """samples/: N graded answers to every question to sample, shard by shard (resumable)."""
    card = job.card
    prompts, job.too_long, table = iteration_prompts(
        job.task, job.sets, tokenizer, job.format.style, card.sampling.max_model_len
    )
    write_parquet_atomic(table, job.run.questions(job.iteration))
    data_sha256 = questions_sha256(prompts.questions, prompts.texts)
    params = sampling_params(card, job.iteration, job.format)
    engine = make_engine(job.model.path, card.sampling, card.seed, card.model.trust_remote_code, card.resources)
    try:
        report = sample_answers(
            job.task,
            prompts.questions,
            prompts.texts,
            engine,
            params,
            job.run.samples(job.iteration),
            card.sampling.questions_per_shard,
            fixed_settings={"weights_sha256": job.model.weights_sha256, "data_sha256": data_sha256},
            progress=progress,
            prompt_ids=prompts.ids,
        )
    finally:
        engine.close()  # frees the vLLM engine's memory before the pair work and the stages after it
    return report, params, data_sha256


def sampling_params(card: Card, iteration: int, fmt: PromptFormat) -> SamplingParams:
    """What iteration `iteration` samples with: the card's sampling section and the model's stop tokens."""
    return SamplingParams(
        num_samples=card.sampling.num_samples,
        temperature=card.sampling.temperature(iteration),
        top_p=card.sampling.top_p,
        max_new_tokens=card.sampling.max_new_tokens,
        seed=card.seed,
        stop_token_ids=fmt.stop_token_ids,
        stop=fmt.stop_strings,
    )


def _pair(job: BuildJob, tokenizer):
    """gold.parquet, then the pairs of the samples and the gold solutions, and their counts."""
    left_out = set(job.too_long)
    sampled = [q for q in job.sets.sampled if q.question_id not in left_out]
    gold = gold_table(job.task, sampled, tokenizer, job.format.end_of_turn_id)
    write_parquet_atomic(gold, job.dir / "gold.parquet")
    samples = read_samples(job.run.samples(job.iteration))
    pairs, stats = build_pairs(samples, job.card.pairs, job.card.seed, gold, job.task)
    stats["contaminated"] = None if job.sets.contaminated is None else len(job.sets.contaminated)
    stats["questions_prompt_too_long"] = len(job.too_long)
    if job.sets.contaminated is not None:
        write_text_atomic(job.dir / "contaminated.txt", "".join(f"{q}\n" for q in job.sets.contaminated))
    if pairs.height == 0:
        log.warning(
            "iteration %d produced no pairs: %s. Raise sampling.num_samples or pick an easier task",
            job.iteration,
            ", ".join(f"{k}={v}" for k, v in stats.items()),
        )
    return pairs, stats


def publish(
    job: BuildJob, pairs, stats: dict, report, params, data_sha256: str, sampling: dict | None = None
) -> BuildManifest:
    """pairs/, then README.md (the dataset card), then manifest.json, last: it vouches for the rest.
    `sampling`: the samples' settings (default: samples/settings.json; a semi-online iteration's slices')."""
    card, iteration = job.card, job.iteration
    save_pairs(pairs, iteration, job.run.pairs(iteration))
    fp = fingerprint(pairs)
    manifest = BuildManifest(
        **job.identity,
        pairs_fingerprint=fp,
        iteration=iteration,
        run=card.name,
        task=card.task.name,
        task_options=card.task.options(),
        seed=card.seed,
        model=job.model.spec,
        previous_iteration=iteration - 1 if iteration > 1 else None,
        data_sha256=data_sha256,
        data_source=job.sets.source,
        rows_skipped_empty_gold=job.sets.skipped_rows,
        held_out_questions=len(job.sets.held_out),
        held_out_sampled=len(job.sets.sampled) > len(job.sets.train),
        temperature=params.temperature,
        pairs_settings=dataclasses.asdict(card.pairs),
        sampling=sampling or read_json(job.run.samples(iteration) / "settings.json"),
        sampling_seconds=round(report.seconds, 1),
        timings=timing.take(),  # of this run of the build: a resumed one counts its own part
        sampling_tokens_per_s=round(report.tokens / report.seconds, 1) if report.seconds and report.tokens else None,
        counts=stats,
        hardware=describe(),  # samples are reproducible on one machine; bf16 kernels differ between CPUs
        irpo_version=__version__,
    )
    text = dataset_card(
        license=job.task.license,
        iteration=iteration,
        run=card.name,
        model=job.model.spec,
        task=card.task.name,
        num_samples=card.sampling.num_samples,
        pairs_per_question=card.pairs.pairs_per_question,
        stats=stats,
        pair_scheme=card.pairs.scheme,
        label=card.pairs.label,
        weights_sha256=job.model.weights_sha256[:16],
        previous=f"iter_{iteration - 1}" if iteration > 1 else "none (base model)",
        build_card_sha256=manifest.build_card_sha256[:16],
        seed=card.seed,
        temperature=params.temperature,
        engine=manifest.sampling.get("engine"),
        source=job.sets.source,
        fingerprint=fp[:16],
        version=__version__,
    )
    write_card_and_manifest(job.dir, text, manifest.to_dict())
    return manifest


def build_more_pairs(card: Card, iteration: int, factor: int, runs_dir: str | Path = "runs") -> tuple[Path, str]:
    """Pairs of iteration T's samples with factor x K per question (and factor x pairs.max_pairs),
    in iter_T/pairs_{factor}x/: the paper's "twice as much data" baselines. No new sampling.

    Returns (folder, fingerprint); a finished folder with the same settings is reused.
    """
    run = RunFolder.for_card(card, runs_dir)
    iter_dir = run.iteration(iteration)
    if not run.manifest(iteration).is_file():
        raise TaskError(f"{iter_dir} is not built; run `irpo data build --iter {iteration}` first")
    config = dataclasses.replace(
        card.pairs,
        pairs_per_question=factor * card.pairs.pairs_per_question,
        max_pairs=None if card.pairs.max_pairs is None else factor * card.pairs.max_pairs,
    )
    out, record = run.pairs(iteration, factor), run.pairs_record(iteration, factor)
    settings = {
        # Keys added since at their defaults are left out, so a folder paired by an earlier release stays complete.
        "pairs": {k: v for k, v in dataclasses.asdict(config).items() if ADDED_KEYS.get(f"pairs.{k}", ...) != v},
        "seed": card.seed,
        "samples_fingerprint": _samples_digest(run.samples(iteration)),
    }
    if record.is_file() and out.is_dir():
        done = read_json(record)
        if done.get("settings") == settings and isinstance(done.get("pairs_fingerprint"), str):
            return out, done["pairs_fingerprint"]
    gold = read_parquet(iter_dir / "gold.parquet") if (iter_dir / "gold.parquet").is_file() else None
    pairs, stats = build_pairs(
        read_samples(run.samples(iteration)), config, card.seed, gold, task_from_config(card.task)
    )
    save_pairs(pairs, iteration, out)
    fp = fingerprint(pairs)
    write_text_atomic(
        record, json.dumps({"settings": settings, "counts": stats, "pairs_fingerprint": fp}, indent=2) + "\n"
    )
    log.info("iteration %d, %dx pairs: %d pairs -> %s", iteration, factor, stats["pairs"], out)
    return out, fp


def _samples_digest(samples_dir: Path) -> str:
    digest = hashlib.sha256()
    for shard in sorted(samples_dir.glob("part-*.parquet")):
        digest.update(shard.read_bytes())
    return digest.hexdigest()
