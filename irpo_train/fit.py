"""One training run (a phase: the selection run, or the retrain) from M_{T-1}, resumable.

    rows ─► transformers.Trainer (DPONLLTrainer) with its callbacks ─► work/PHASE/{best,last}/, done.json

Every process of a torchrun / accelerate launch runs it; only the main one writes (the Trainer's
checkpoints included). A killed run resumes from the last checkpoint written to the end.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from irpo import timing
from irpo.card import TrainConfig
from irpo.errors import SettingError
from irpo.reading import read_json
from irpo.runs import write_json_atomic
from irpo_train import distributed
from irpo_train.candidates import SaveCandidates
from irpo_train.data import collate
from irpo_train.job import TrainJob
from irpo_train.scorer import CompletionScorer
from irpo_train.selection import choose_on_vllm, selection_callback
from irpo_train.trainer import (
    DPONLLTrainer,
    MetricsFile,
    NoFinalCheckpoint,
    ProbeLogps,
    ProgressWithLoss,
    TrackerLogs,
    TrimHeap,
)

log = logging.getLogger(__name__)


def fit(
    job: TrainJob,
    phase: str,
    rows: list[dict],
    max_steps: int,
    tokenizer,
    probe_rows,
    progress: bool,
    choose: bool = True,
    args=None,
    segment_weights: Path | None = None,
    in_order: bool = False,
) -> dict:
    """Train one phase from M_{T-1} (job.take_model()) in work/PHASE/, resumably; its record.

    `choose`: score candidates on the held-out questions every select_every steps and keep the best.
    `segment_weights`: this is a slice of a semi-online iteration (irpo.slices) that is not its last: the run
    stops at `max_steps` keeping its checkpoint (the next slice goes on from it, on other rows), saves the
    weights there for the next slice's sampling, and the phase is not done. `in_order`: the rows are read in
    their order (a slice's, already shuffled and cut to the steps left; irpo_train.train_slice).
    Every process runs it; only the main one writes (the Trainer's checkpoints included).
    """
    folder, cfg = job.work / phase, job.cfg
    record_path = folder / "done.json"
    if record_path.is_file():
        log.info("%s: the %s run is done; reusing it", job.out_dir.name, phase)
        return read_json(record_path)
    folder.mkdir(parents=True, exist_ok=True)
    log.info("%s: %s run, %d rows, up to %d steps", job.out_dir.name, phase, len(rows), max_steps)
    args = args or training_arguments(job, folder, max_steps, progress)  # before the model loads
    model = job.take_model()
    selecting = choose and bool(job.sets.held_out)
    accuracy = selection_callback(job, folder, tokenizer) if selecting and cfg.select_with == "trainer" else None
    candidates = (
        SaveCandidates(folder / "candidates", cfg.select_every, tokenizer) if selecting and not accuracy else None
    )
    callbacks = [MetricsFile(folder / "metrics.jsonl"), *[c for c in (accuracy, candidates) if c]]
    callbacks.append(TrackerLogs(job.tracker, f"train/{job.out_dir.name}/{phase}"))
    if probe_rows:
        every = cfg.probe_every or cfg.select_every
        callbacks.append(
            ProbeLogps(
                probe_rows,
                every=every,
                pad_token_id=tokenizer.pad_token_id,
                path=folder / "probe.jsonl",
                bf16=job.bf16,
                # per_step scored the probe with the policy's own start: step 0 is zero (not so from M_0)
                zero_at_start=job.step_reference is not None and not job.fixed_reference,
            )
        )
    if not candidates and segment_weights is None:
        callbacks.append(NoFinalCheckpoint())
    callbacks.append(TrimHeap())
    trainer = DPONLLTrainer(
        model=CompletionScorer(model),
        args=args,
        train_dataset=rows,
        beta=cfg.beta,
        alpha=cfg.alpha,
        objective=cfg.objective,
        reference=job.step_reference,
        in_order=in_order,
        data_collator=lambda batch: collate(batch, tokenizer.pad_token_id),
        callbacks=callbacks,
    )
    # The stock bar prints a dict per step; ours shows the loss in the bar. Quiet: neither.
    trainer.remove_callback(ProgressCallback if progress else PrinterCallback)
    if progress:
        trainer.add_callback(ProgressWithLoss)
    for saver in (accuracy, candidates):
        if saver:
            saver.save = trainer.save_full_model
    if distributed.is_main():  # it deletes a checkpoint written half; then every process finds the same one
        last_complete_checkpoint(folder / "checkpoints")
    distributed.barrier()
    checkpoint = last_complete_checkpoint(folder / "checkpoints")
    if checkpoint:
        log.info("resuming the %s run from %s", phase, checkpoint)
    with timing.phase(f"{phase} run"):
        trainer.train(resume_from_checkpoint=checkpoint)
    steps = trainer.state.global_step
    if segment_weights is not None:  # the next slice resumes from the checkpoint at this step
        with timing.phase("save for the next slice"):
            trainer.save_full_model(segment_weights, tokenizer)
        return {"phase": phase, "steps": steps, "pairs": len(rows), "best": accuracy.best() if accuracy else None}
    if candidates:
        del trainer, model, callbacks, candidates  # the engine that scores the candidates needs the memory
        with timing.phase(f"{phase} run: candidate scoring"):
            best = choose_on_vllm(job, folder, tokenizer)
    else:
        best = accuracy.best() if accuracy else None
        if not (best and (folder / "best").is_dir()):
            with timing.phase("save"):
                trainer.save_full_model(folder / "last")  # the model this phase ends with
    record = {"phase": phase, "steps": steps, "pairs": len(rows), "best": best}
    if distributed.is_main():
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        write_json_atomic(record_path, record)  # last: the phase is done
    distributed.barrier()
    return record


def training_arguments(job: TrainJob, folder: Path, max_steps: int, progress: bool, in_order: bool = False):
    """`in_order`: a semi-online slice's rows, which hold only the steps left to train: nothing to skip on resume."""
    cfg = job.cfg
    return TrainingArguments(
        ignore_data_skip=in_order,
        output_dir=str(folder / "checkpoints"),
        per_device_train_batch_size=per_device_batch(cfg, distributed.world_size()),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.warmup_steps,
        max_steps=max_steps,
        logging_steps=1,
        save_steps=cfg.save_every or cfg.select_every,
        save_total_limit=1,
        seed=job.card.seed,
        bf16=job.bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",  # irpo.tracking logs every stage, the Trainer's curves through TrackerLogs
        remove_unused_columns=False,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # the scorer uses every parameter (LoRA: every trainable one)
    )


def per_device_batch(cfg: TrainConfig, world_size: int) -> int:
    """Pairs per forward on each process, so that one optimiser step sees train.batch_size pairs."""
    share = cfg.gradient_accumulation_steps * world_size
    if cfg.batch_size % share:
        raise SettingError(
            f"train.batch_size={cfg.batch_size} pairs per step cannot be split over {world_size} process(es) x "
            f"train.gradient_accumulation_steps={cfg.gradient_accumulation_steps}; make batch_size a multiple "
            f"of {share}"
        )
    return cfg.batch_size // share


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint-N that was written to the end, or None.

    The Trainer writes trainer_state.json last; a kill while it saves leaves a checkpoint-N without
    it (or with half of it), which transformers' get_last_checkpoint would pick and then fail to
    load. Such a folder is deleted: its step will be trained again.
    """
    if not folder.is_dir():
        return None
    found = sorted(
        (int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()
    )
    for _, path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            log.info("%s was not written to the end (killed while saving); discarding it", path)
            shutil.rmtree(path, ignore_errors=True)
    return None
