"""Choosing the step: greedy accuracy on the held-out questions every train.select_every steps.

Two ways, one record (checkpoint_choice.json): train.select_with=trainer checks with the model in the
training processes (HeldOutAccuracy, irpo_train.trainer); vllm saves a candidate at each check and
scores them all on vLLM after the run (irpo_train.candidates). The prompts are the ones the build
recorded for the held-out questions (iter_T/questions.parquet).
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from irpo.engines import VLLMEngine
from irpo.hardware import resolve_dtype
from irpo.runs import CHECKPOINT_CHOICE
from irpo.tasks import task_from_config
from irpo_train import distributed
from irpo_train.candidates import choose_candidate
from irpo_train.job import TrainJob
from irpo_train.trainer import HeldOutAccuracy, HeldOutQuestions


def held_out_questions(job: TrainJob, tokenizer) -> HeldOutQuestions:
    """The held-out questions a check scores (at most train.select_questions of them), with the prompt ids
    the build recorded for them (iter_T/questions.parquet; a prompt that overflows the context has none)."""
    cfg, task = job.cfg, task_from_config(job.card.task)
    held_out = job.sets.held_out[: cfg.select_questions] if cfg.select_questions is not None else job.sets.held_out
    held_out = [q for q in held_out if q.question_id in job.sets.prompt_ids]
    prompt_ids = [job.sets.prompt_ids[q.question_id] for q in held_out]
    return HeldOutQuestions(
        task,
        held_out,
        prompt_ids,
        tokenizer,
        job.card.sampling.max_new_tokens,
        bf16=job.bf16,
        stop_token_ids=job.format.stop_token_ids,
        stop_strings=job.format.stop_strings,
        max_model_len=job.card.sampling.max_model_len,
    )


def selection_callback(job: TrainJob, folder: Path, tokenizer) -> HeldOutAccuracy:
    """train.select_with=trainer: greedy accuracy with the model in the training processes."""
    return HeldOutAccuracy(
        held_out_questions(job, tokenizer),
        every=job.cfg.select_every,
        best_dir=folder / "best",
        record=folder / CHECKPOINT_CHOICE,
        baseline=job.cfg.select_baseline,
    )


def choose_on_vllm(job: TrainJob, folder: Path, tokenizer) -> dict | None:
    """train.select_with=vllm: the main process scores the saved candidates; the others wait for its record.

    The others poll the record rather than wait at a barrier: scoring 20 candidates of a large
    model takes longer than a process group's timeout.
    """
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    record = folder / CHECKPOINT_CHOICE
    if not distributed.is_main():
        return distributed.wait_for_record(record, "complete")["best"]
    card = job.card

    def engine(path: Path) -> VLLMEngine:
        return VLLMEngine(
            path,
            resolve_dtype(card.sampling.dtype),
            card.seed,
            card.sampling,
            card.resources,
            card.model.trust_remote_code,
        )

    return choose_candidate(
        folder, job.start.path, held_out_questions(job, tokenizer), engine, baseline=job.cfg.select_baseline
    )
