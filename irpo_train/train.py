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

The policy starts as M_{T-1}, which is also the reference (train.reference=initial: M_0 is, from
T = 2 on, scored as a model of its own). With train.reference_logps=precompute
the reference log-probs of every pair are computed with the policy's own weights before the
first step, and no second model is loaded; with per_step a frozen copy (LoRA: the policy with its
adapters off) scores each batch as it is trained on (irpo_train.reference).
Work in progress lives in models/M_T.work/ (select/ and retrain/ each with checkpoints and
metrics, the reference cache); a killed run resumes from its last checkpoint of the phase it was
in, and M_T/ appears in one rename when training is done.
"""

from __future__ import annotations

from pathlib import Path

from irpo import timing
from irpo.card import Card
from irpo.errors import SettingError
from irpo.hardware import release_memory
from irpo.reading import read_json
from irpo.records import TrainManifest
from irpo.runs import CHECKPOINT_CHOICE, TRAIN_MANIFEST, RunFolder
from irpo.slices import require_offline
from irpo.tracking import Tracker, open_tracker
from irpo_train import distributed
from irpo_train.fit import fit, training_arguments
from irpo_train.job import TrainJob, load_tokenizer, prepare_job
from irpo_train.rows import selection_fingerprint, training_rows
from irpo_train.saving import write_model


def train_iteration(
    card: Card, iteration: int, runs_dir: str | Path = "runs", progress: bool = True, ablation: str | None = None
) -> Path:
    """Train M_T (or the ablation's side model); return its folder. Skips a finished one."""
    try:
        return _train_iteration(card, iteration, runs_dir, progress, ablation)
    finally:  # `irpo run`'s next stage runs in this process: without this, beside ~5 GB of freed heap
        release_memory()


def _train_iteration(card: Card, iteration: int, runs_dir: str | Path, progress: bool, ablation: str | None) -> Path:
    require_offline(card, "irpo train")
    distributed.check_launch()
    distributed.init()
    timing.take()  # this stage's phases only
    job = prepare_job(card, iteration, runs_dir, ablation)
    if job is None:  # already trained from these pairs and this reference
        return RunFolder.for_card(card, runs_dir).model(iteration, ablation)
    with open_tracker(card, job.run, f"train-{job.out_dir.name}") as job.tracker:
        _fit_and_save(job, iteration, progress)
        if distributed.is_main():
            log_training(job.tracker, job.out_dir, iteration)
    return job.out_dir


def _fit_and_save(job: TrainJob, iteration: int, progress: bool) -> None:
    tokenizer = load_tokenizer(job)
    # Before any model is loaded: ZeRO-3 and FSDP's low-memory loading read the arguments then.
    first_args = training_arguments(job, job.work / "select", job.cfg.max_steps, progress)
    rows, probe_rows, notes = training_rows(job, tokenizer, progress)
    held_ids = {q.question_id for q in job.sets.held_out}
    if job.retrain:
        selection_rows = [r for r in rows if r["question_id"] not in held_ids]
        if not selection_rows:
            raise SettingError(
                f"every pair of {job.run.pairs(iteration)} is of a held-out question; lower task.held_out"
            )
        selection = fit(job, "select", selection_rows, job.cfg.max_steps, tokenizer, None, progress, args=first_args)
        release_memory()  # the selection run's model, optimiser state and activations, before the retrain's
        steps = (selection["best"] or {}).get("step") or job.cfg.max_steps
        final = fit(job, "retrain", rows, steps, tokenizer, probe_rows, progress, choose=False)
        notes["selection"] = {
            "pairs": len(selection_rows),
            "pairs_fingerprint": selection_fingerprint(job, held_ids),
            "steps": selection["steps"],
        }
    else:
        selection = final = fit(
            job, "select", rows, job.cfg.max_steps, tokenizer, probe_rows, progress, args=first_args
        )
    job.step_reference = None  # the frozen reference copy, and the last run's leftovers, before the final load
    release_memory()
    if distributed.is_main():  # the others are done: nothing below is collective
        with timing.phase("save"):
            write_model(job, tokenizer, selection, final, notes, len(rows))


def log_training(tracker: Tracker, model_dir: Path, iteration: int) -> None:
    """The held-out checks (a curve on the selection run's axis) and the trained model's record, at step t."""
    name = model_dir.name
    choice = model_dir / CHECKPOINT_CHOICE
    if choice.is_file():
        for check in read_json(choice).get("history", []):
            tracker.log(
                {f"train/{name}/held_out_accuracy": check["accuracy"]}, check["step"], axis=f"train/{name}/select/step"
            )
    manifest = TrainManifest.from_json(model_dir / TRAIN_MANIFEST)
    tracker.log(
        {
            f"train/{name}/selected_step": manifest.selected_step,
            f"train/{name}/held_out_accuracy_selected": manifest.held_out_accuracy,
            f"train/{name}/pairs_trained": manifest.pairs_trained,
            f"train/{name}/steps": manifest.steps,
        },
        iteration,
    )
