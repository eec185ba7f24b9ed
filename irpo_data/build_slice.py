"""`irpo data build --iter T --slice J`: slice J of a semi-online iteration (sampling.resample_every; irpo.slices).

    slice J's questions ─► samples/slice-J/ (from M_(T-1) for J = 0, else the weights training reached at
    step J x s) ─► gold ─► build_pairs ─► slices/slice-J/pairs + record.json (last: it vouches for it)

After the last slice: the iteration's pairs/ (every slice's pairs, with a `slice` column), README.md and
manifest.json, as irpo_data.build publishes an offline iteration, so pushing and the report read it the same.
A finished slice is not sampled again; a killed one resumes from its finished shards. The slices of an
iteration that was sampled from another M_(T-1), or built from another card, are set aside (kept) at slice 0.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import polars as pl

from irpo import timing
from irpo.card import BUILD_SECTIONS, Card
from irpo.errors import RunFolderError, SettingError
from irpo.models import ResolvedModel, resolve_model, weights_sha256
from irpo.pairs import build_pairs, example_pairs
from irpo.prompts import prompt_format
from irpo.reading import load_dataset_dir, read_json
from irpo.runs import RunFolder, set_aside, write_json_atomic, write_parquet_atomic, write_text_atomic
from irpo.slices import SlicePlan, plan_of_slice
from irpo.tasks import task_from_config
from irpo.tracking import open_tracker
from irpo_data.build import (
    BuildJob,
    gold_table,
    iteration_prompts,
    publish,
    question_sets,
    questions_sha256,
    sampling_model,
    sampling_params,
)
from irpo_data.publish import fingerprint, save_pairs
from irpo_data.sampling import SamplingParams, SamplingReport, make_engine, read_samples, sample_answers

log = logging.getLogger(__name__)

RECORD = "record.json"


def build_slice(card: Card, iteration: int, index: int, runs_dir: str | Path = "runs", progress: bool = True) -> dict:
    """Sample, grade and pair slice `index` of iteration `iteration`; its record (slices/slice-J/record.json)."""
    plan = plan_of_slice(card, iteration, index, "irpo data build")
    timing.take()  # this slice's phases only
    run = RunFolder.for_card(card, runs_dir)
    run.freeze_card(card, BUILD_SECTIONS)
    build_sha = card.sha256(BUILD_SECTIONS)
    start = sampling_model(card, run, iteration, None)  # M_(T-1): the iteration's identity, as an offline build's
    key = {"build_card_sha256": build_sha, "slices": [plan.every, plan.count]}  # train.max_steps deals the slices
    if index == 0:
        _set_aside_if_stale(run, iteration, key, start.weights_sha256)
    record_path = run.slice(iteration, index) / RECORD
    record = read_json(record_path) if record_path.is_file() else None
    if record is not None and {k: record.get(k) for k in key} != key:
        raise RunFolderError(
            f"slice {index} of iteration {iteration} was dealt with other settings (train.max_steps, "
            f"sampling.resample_every); build slice 0 first: `irpo data build --iter {iteration} --slice 0` sets the "
            "iteration's old slices aside"
        )
    if record is not None and _sampled_from_current_weights(run, iteration, plan, index, record):
        log.info("iteration %d, slice %d: already built; nothing to do", iteration, index)
        if plan.last(index) and not _published(run, iteration, plan):
            _publish_iteration(card, run, iteration, plan, start)
        return record
    # About to be built (again): no manifest may vouch for the iteration's pairs until the last slice is.
    if run.manifest(iteration).is_file():
        set_aside(run.manifest(iteration), f"slice {index} of iteration {iteration} is built again")
    record = _sample_and_pair(card, run, iteration, index, plan, start, key, progress)
    if plan.last(index):
        _publish_iteration(card, run, iteration, plan, start)
    return record


def _set_aside_if_stale(run: RunFolder, iteration: int, key: dict, start_sha: str) -> None:
    """An iteration sliced from another M_(T-1), another card or into other slices is set aside whole (kept)."""
    first = run.slice(iteration, 0) / RECORD
    if not first.is_file():
        return
    before = read_json(first)
    if ({k: before.get(k) for k in key}, before.get("weights_sha256")) != (key, start_sha):
        set_aside(
            run.iteration(iteration),
            f"iteration {iteration} was sliced from another card, M_{iteration - 1} or train.max_steps",
        )


def _sampled_from_current_weights(run: RunFolder, iteration: int, plan: SlicePlan, index: int, record: dict) -> bool:
    """Whether slice `index`'s record still holds: the weights it was sampled from are those training reached
    (slice J-1 may have been trained again since); where they are gone, the training after them is done."""
    if index == 0:
        return True  # M_(T-1): checked with the whole iteration (_set_aside_if_stale)
    folder = run.slice_weights(iteration, plan.steps(index)[0])
    if not (folder / "config.json").is_file() or weights_sha256(folder) == record.get("weights_sha256"):
        return True
    for j in range(index, plan.count):  # this slice and the ones after it were sampled from other weights
        for stale in (run.slice(iteration, j), run.samples(iteration) / f"slice-{j}"):
            if stale.exists():
                set_aside(stale, f"slice {j} of iteration {iteration} was sampled from weights trained again since")
    return False


def _published(run: RunFolder, iteration: int, plan: SlicePlan) -> bool:
    """Whether the iteration's manifest is there and names the pairs every slice's record has now."""
    if not run.manifest(iteration).is_file():
        return False
    slices = read_json(run.manifest(iteration)).get("sampling", {}).get("semi_online", {}).get("slices", [])
    now = [read_json(run.slice(iteration, j) / RECORD)["pairs_fingerprint"] for j in range(plan.count)]
    return [s.get("pairs_fingerprint") for s in slices] == now


def slice_model(card: Card, run: RunFolder, iteration: int, plan: SlicePlan, index: int, start: ResolvedModel):
    """What slice `index` samples from: M_(T-1) for slice 0, else the weights training reached at its first step."""
    if index == 0:
        return start
    step = plan.steps(index)[0]
    folder = run.slice_weights(iteration, step)
    if not (folder / "config.json").is_file():
        raise RunFolderError(
            f"slice {index} samples from the weights at step {step}, which are not in {folder} yet: train slice "
            f"{index - 1} first (`irpo train --iter {iteration} --slice {index - 1}`; `irpo run` alternates them)"
        )
    return resolve_model(str(folder), trust_remote_code=card.model.trust_remote_code)


def _sample_and_pair(card, run, iteration, index, plan, start, key, progress) -> dict:
    from transformers import AutoTokenizer  # here: `irpo data --help` and `irpo run`'s parent import this module

    with timing.phase("model and questions"):
        model = slice_model(card, run, iteration, plan, index, start)
        task = task_from_config(card.task)
        sets = question_sets(card, check_contamination=index == 0)
    # The prompts are M_(T-1)'s, for every slice: the trainer scores the ids the build recorded.
    tokenizer = AutoTokenizer.from_pretrained(start.path, trust_remote_code=card.model.trust_remote_code)
    fmt = prompt_format(start.path, tokenizer, task, card.task.prompt_style)
    prompts, too_long, table = iteration_prompts(task, sets, tokenizer, fmt.style, card.sampling.max_model_len)
    if len(prompts.questions) < plan.count:
        raise SettingError(
            f"{len(prompts.questions)} training questions cannot fill {plan.count} slices (train.max_steps="
            f"{plan.max_steps} in slices of sampling.resample_every={plan.every} steps): raise "
            "sampling.resample_every or task.max_questions"
        )
    if index == 0:
        write_parquet_atomic(table, run.questions(iteration))
        if sets.contaminated is not None:
            write_text_atomic(
                run.iteration(iteration) / "contaminated.txt", "".join(f"{q}\n" for q in sets.contaminated)
            )
    questions, texts, ids = (plan.share(part, index) for part in (prompts.questions, prompts.texts, prompts.ids))
    folder, samples_dir = run.slice(iteration, index), run.samples(iteration) / f"slice-{index}"
    settings = samples_dir / "settings.json"
    if settings.is_file() and read_json(settings).get("weights_sha256") != model.weights_sha256:
        set_aside(samples_dir, f"slice {index} was sampled from other weights (slice {index - 1} trained again)")
    log.info(
        "iteration %d, slice %d of %d: sampling %d questions from %s (training steps %d-%d next)",
        iteration,
        index,
        plan.count,
        len(questions),
        model.spec,
        *plan.steps(index),
    )
    params = sampling_params(card, iteration, fmt)
    engine = make_engine(model.path, card.sampling, card.seed, card.model.trust_remote_code, card.resources)
    try:
        with timing.phase("sampling"):
            report = sample_answers(
                task,
                questions,
                texts,
                engine,
                params,
                samples_dir,
                card.sampling.questions_per_shard,
                fixed_settings={
                    "weights_sha256": model.weights_sha256,
                    "data_sha256": questions_sha256(questions, texts),
                    "slice": index,
                },
                progress=progress,
                prompt_ids=ids,
            )
    finally:
        engine.close()  # the next stage (training) needs the memory
    with timing.phase("pairs"):
        gold = gold_table(task, questions, tokenizer, fmt.end_of_turn_id)
        write_parquet_atomic(gold, folder / "gold.parquet")
        pairs, stats = build_pairs(read_samples(samples_dir), card.pairs, card.seed, gold, task)
        save_pairs(pairs, iteration, folder / "pairs")
    stats["questions_prompt_too_long"] = len(too_long) if index == 0 else 0  # counted once, for the iteration
    stats["contaminated"] = None if sets.contaminated is None else len(sets.contaminated)
    record = {
        "slice": index,
        "steps": list(plan.steps(index)),
        **key,
        "model": model.spec,
        "weights_sha256": model.weights_sha256,  # what this slice was sampled from
        "questions": len(questions),
        "pairs_fingerprint": fingerprint(pairs),
        "counts": stats,
        "sampling": read_json(settings),
        "sampling_seconds": round(report.seconds, 1),
        "sampling_tokens": report.tokens,
        "timings": timing.take(),  # engine start (the weight hand-over), sampling, grading, pairs
    }
    write_json_atomic(folder / RECORD, record)  # last: the slice is built
    log.info("iteration %d, slice %d: %d pairs from %d questions", iteration, index, stats["pairs"], len(questions))
    return record


def _publish_iteration(card: Card, run: RunFolder, iteration: int, plan: SlicePlan, start: ResolvedModel) -> None:
    """The iteration's pairs/ (every slice's, with a `slice` column), dataset card and manifest, once all are built."""
    records = [read_json(run.slice(iteration, j) / RECORD) for j in range(plan.count)]
    tables = []
    for j in range(plan.count):
        table = pl.from_arrow(load_dataset_dir(run.slice(iteration, j) / "pairs")["train"].data.table)
        tables.append(table.drop("iteration").with_columns(pl.lit(j, dtype=pl.Int32).alias("slice")))
    pairs = pl.concat(tables)
    stats = _sum_counts([r["counts"] for r in records])
    sets = question_sets(card)
    job = BuildJob(
        card,
        iteration,
        run,
        run.iteration(iteration),
        start,
        {"build_card_sha256": card.sha256(BUILD_SECTIONS), "weights_sha256": start.weights_sha256},
        task_from_config(card.task),
        sets,
    )
    seconds = sum(r["sampling_seconds"] for r in records)
    report = SamplingReport(plan.count, 0, stats["generations"], sum(r["sampling_tokens"] for r in records), seconds)
    first = records[0]["sampling"]
    sampling = {
        **{k: v for k, v in first.items() if k not in ("weights_sha256", "slice", "data_sha256")},
        "semi_online": {
            "resample_every": plan.every,
            "slices": [
                {k: r[k] for k in ("slice", "steps", "weights_sha256", "questions", "pairs_fingerprint", "timings")}
                for r in records
            ],
        },
    }
    params = SamplingParams(**first["params"])
    # The iteration's questions and prompts: those of its slices, in slice order.
    data_sha256 = hashlib.sha256("".join(r["sampling"]["data_sha256"] for r in records).encode()).hexdigest()
    manifest = publish(job, pairs, stats, report, params, data_sha256, sampling)
    with open_tracker(card, run, f"build-{iteration}") as tracker:  # as an offline build logs its counts
        tracker.log({f"build/{k}": v for k, v in manifest.counts.items()}, iteration)
        tracker.table(f"build/example_pairs_{iteration}", example_pairs(pairs), iteration)
    log.info(
        "iteration %d: %d slices published, %d pairs -> %s (fingerprint %s)",
        iteration,
        plan.count,
        pairs.height,
        job.dir,
        manifest.pairs_fingerprint[:16],
    )


def _sum_counts(counts: list[dict]) -> dict:
    """The iteration's counts from its slices': sums, and the sample accuracy weighted by generations."""
    total: dict = {}
    for c in counts:
        for key, value in c.items():
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            total[key] = total.get(key, 0) + value
    # Weighted by the samples each slice could judge (all of them, unless some questions have no gold).
    judged = [c.get("samples_judged", c["generations"]) for c in counts]
    total["sample_accuracy"] = (
        sum(c["sample_accuracy"] * n for c, n in zip(counts, judged)) / sum(judged) if sum(judged) else 0.0
    )
    total["contaminated"] = counts[0].get("contaminated")
    return total
