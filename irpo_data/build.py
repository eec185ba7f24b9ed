"""`irpo-data build --iter T`: one iteration's pair dataset, from card to runs/NAME/iter_T/.

    card -> training questions (minus the held-out slice) -> prompts
         -> samples/ (sampling: N answers each, graded, sharded, resumable)
         -> build_pairs -> pairs/ + README.md + manifest.json (publish)

The sampling model is the card's base model at T=1 and runs/NAME/models/M_{T-1} after, unless
`model` names another. A finished iteration (manifest present, same card, model and data) is
not rebuilt; a killed one resumes from its finished sample shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from irpo_data import __version__
from irpo_data.card import BUILD_SECTIONS, Card
from irpo_data.hardware import describe
from irpo_data.models import ModelError, ResolvedModel, resolve_model
from irpo_data.pairs import build_pairs
from irpo_data.publish import dataset_card, fingerprint, save_pairs, write_card_and_manifest
from irpo_data.runs import RunFolder
from irpo_data.sampling import SamplingParams, make_engine, read_samples, render_prompts, sample_answers
from irpo_data.tasks import Question, get_task, split_held_out

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    iter_dir: Path
    manifest: dict
    skipped: bool  # True when an identical finished build was found and kept


def training_questions(card: Card) -> tuple[list[Question], list[Question], str, int]:
    """(questions to sample, held-out questions, source, rows skipped for an empty gold)."""
    task = get_task(card.task.name)
    loaded = task.load(card.task.train_split, card.task.data_dir, card.task.hub_id)
    train, held = split_held_out(loaded.questions, card.task.held_out)
    if card.task.max_questions is not None:
        train = train[: card.task.max_questions]
    return train, held, loaded.source, loaded.skipped_empty_gold


def sampling_model(card: Card, run: RunFolder, iteration: int, model: str | None) -> ResolvedModel:
    if model is not None:
        return resolve_model(model, trust_remote_code=card.model.trust_remote_code)
    if iteration == 1:
        return resolve_model(card.model.base, card.model.revision, card.model.trust_remote_code)
    previous = run.model(iteration - 1)
    if not (previous / "config.json").is_file():
        raise ModelError(
            f"iteration {iteration} samples from {previous}, which does not exist yet; train it with "
            f"`irpo-train --card ... --iter {iteration - 1}`, or pass --model PATH to sample from another model"
        )
    return resolve_model(str(previous))


def questions_sha256(questions: list[Question], prompts: list[str]) -> str:
    digest = hashlib.sha256()
    for question, prompt in zip(questions, prompts):
        digest.update(json.dumps([question.question_id, question.gold, prompt]).encode())
    return digest.hexdigest()


def build_iteration(
    card: Card, iteration: int, runs_dir: str | Path = "runs", model: str | None = None, progress: bool = True
) -> BuildResult:
    if iteration < 1:
        raise ValueError(f"--iter must be 1 or more, got {iteration}")
    run = RunFolder.for_card(card, runs_dir)
    run.freeze_card(card, BUILD_SECTIONS)
    resolved = sampling_model(card, run, iteration, model)
    iter_dir = run.iteration(iteration)
    identity = {"card_sha256": card.sha256(BUILD_SECTIONS), "weights_sha256": resolved.weights_sha256}
    manifest_path = run.manifest(iteration)
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if all(manifest.get(k) == v for k, v in identity.items()) and run.pairs(iteration).is_dir():
            log.info("iteration %d already built in %s (same card and model); nothing to do", iteration, iter_dir)
            return BuildResult(iter_dir, manifest, skipped=True)
        manifest_path.unlink()  # about to be rebuilt: never leave a manifest that vouches for old pairs

    task = get_task(card.task.name)
    questions, held_out, source, skipped_rows = training_questions(card)
    log.info("iteration %d: %d training questions (%d held out) from %s", iteration, len(questions), len(held_out), source)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=card.model.trust_remote_code)
    prompts = render_prompts(task, questions, tokenizer)
    data_sha256 = questions_sha256(questions, prompts)
    params = SamplingParams(
        num_samples=card.sampling.num_samples,
        temperature=card.sampling.temperature(iteration),
        top_p=card.sampling.top_p,
        max_new_tokens=card.sampling.max_new_tokens,
        seed=card.seed,
    )
    engine = make_engine(resolved.path, card.sampling, card.seed, card.model.trust_remote_code)
    report = sample_answers(
        task, questions, prompts, engine, params, run.samples(iteration), card.sampling.questions_per_shard,
        fixed_settings={"weights_sha256": resolved.weights_sha256, "data_sha256": data_sha256}, progress=progress,
    )  # fmt: skip
    del engine  # frees the vLLM engine's memory before the pair and dataset work

    samples = read_samples(run.samples(iteration))
    pairs, stats = build_pairs(samples, card.pairs.pairs_per_question, card.pairs.max_tokens, card.seed)
    if pairs.height == 0:
        log.warning(
            "iteration %d produced no pairs: %s. Raise sampling.num_samples or pick an easier task",
            iteration, ", ".join(f"{k}={v}" for k, v in stats.items()),
        )  # fmt: skip
    save_pairs(pairs, iteration, run.pairs(iteration))
    fp = fingerprint(pairs)
    manifest = {
        **identity,
        "irpo_version": __version__,
        "run": card.name,
        "iteration": iteration,
        "task": card.task.name,
        "seed": card.seed,
        "model": resolved.spec,
        "previous_iteration": iteration - 1 if iteration > 1 else None,
        "data_sha256": data_sha256,
        "data_source": source,
        "rows_skipped_empty_gold": skipped_rows,
        "held_out_questions": len(held_out),
        "temperature": params.temperature,
        "sampling": json.loads((run.samples(iteration) / "settings.json").read_text()),
        "sampling_seconds": round(report.seconds, 1),
        "sampling_tokens_per_s": round(report.tokens / report.seconds, 1) if report.seconds and report.tokens else None,
        "counts": stats,
        "hardware": describe(),  # samples are reproducible on one machine; bf16 kernels differ between CPUs
        "dataset_fingerprint": fp,
    }
    text = dataset_card(
        license=task.license, iteration=iteration, run=card.name, model=resolved.spec, task=card.task.name,
        num_samples=card.sampling.num_samples, pairs_per_question=card.pairs.pairs_per_question, stats=stats,
        weights_sha256=resolved.weights_sha256[:16], previous=f"iter_{iteration - 1}" if iteration > 1 else "none (base model)",
        card_sha256=identity["card_sha256"][:16], seed=card.seed, temperature=params.temperature,
        engine=manifest["sampling"].get("engine"), source=source, fingerprint=fp[:16], version=__version__,
    )  # fmt: skip
    write_card_and_manifest(iter_dir, text, manifest)
    log.info("iteration %d: %d pairs from %d questions -> %s", iteration, stats["pairs"], stats["questions_paired"], iter_dir)
    return BuildResult(iter_dir, manifest, skipped=False)
