"""`irpo train --iter T --slice J`: the training segment of slice J of a semi-online iteration (irpo.slices).

    slices/slice-J/pairs ─► tokenize ─► reference log-probs (M_(T-1), cached per slice)
        ─► the selection run, resumed from step J x s, trained to step (J+1) x s on this slice's pairs
        ─► models/M_T.work/weights/step-(J+1)s (what slice J+1 samples from)   or, after the last slice, M_T/

One Trainer run in segments: each resumes the checkpoint the one before left (its optimizer state, schedule,
step count and held-out checks), on the rows of its own slice. The held-out checks run every
train.select_every steps and at the end of every slice; M_T is the best checked step, as offline. Under
torchrun every process runs a segment and exits; the build of the next slice samples in a process of its own
in between (no training process waits on it, and on a GPU the engine has the memory to itself).
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

from irpo import timing
from irpo.card import Card
from irpo.errors import RunFolderError
from irpo.hardware import release_memory
from irpo.models import weights_sha256
from irpo.reading import read_json
from irpo.runs import RunFolder, write_json_atomic
from irpo.slices import plan_of_slice
from irpo.tracking import open_tracker
from irpo_train import distributed
from irpo_train.fit import fit, last_complete_checkpoint, training_arguments
from irpo_train.job import TrainJob, load_tokenizer, prepare_job
from irpo_train.rows import training_rows
from irpo_train.saving import write_model
from irpo_train.train import log_training

log = logging.getLogger(__name__)


def train_slice(card: Card, iteration: int, index: int, runs_dir: str | Path = "runs", progress: bool = True) -> Path:
    """Train slice `index`'s segment; after the last, write M_T. Returns M_T's folder (done or not yet)."""
    plan = plan_of_slice(card, iteration, index, "irpo train")
    try:
        distributed.check_launch()
        distributed.init()
        timing.take()
        job = prepare_job(card, iteration, runs_dir, None, slice_index=index)
        if job is None:
            return RunFolder.for_card(card, runs_dir).model(iteration)
        done = job.slice_work(index) / "done.json"
        # The last slice is done when M_T is written (prepare_job says so): a kill while saving it redoes the save.
        if not plan.last(index) and done.is_file() and read_json(done).get("pairs_fingerprint") == job.fingerprint:
            log.info("iteration %d, slice %d: already trained; nothing to do", iteration, index)
            return job.out_dir
        with open_tracker(card, job.run, f"train-{job.out_dir.name}-slice-{index}") as job.tracker:
            _train_segment(job, plan, index, done, progress)
            if plan.last(index) and distributed.is_main():
                log_training(job.tracker, job.out_dir, iteration)
        return job.out_dir
    finally:
        release_memory()


def _train_segment(job: TrainJob, plan, index: int, done: Path, progress: bool) -> None:
    start, end = plan.steps(index)
    folder = job.work / "select"
    # After the last slice's run (its record written, M_T not yet): fit() reuses the record, nothing resumes.
    resumed_at = end if (folder / "done.json").is_file() else _resume_point(job, folder, plan, index)
    tokenizer = load_tokenizer(job)
    args = training_arguments(job, folder, end, progress, in_order=True)
    rows, _, notes = training_rows(job, tokenizer, progress)
    ordered = segment_rows(rows, end - start, job.cfg.batch_size, job.card.seed, index)
    last = plan.last(index)
    weights = None if last else job.run.slice_weights(job.iteration, end)
    log.info("iteration %d, slice %d: steps %d-%d on %d pairs", job.iteration, index, start, end, len(rows))
    # The rows of the steps left (a run killed within the slice resumes at its last checkpoint), in order; at
    # least the last batch, so that a run killed after its last checkpoint still loads it (and trains no step).
    left = ordered[(resumed_at - start) * job.cfg.batch_size :] or ordered[-job.cfg.batch_size :]
    # No probe: its pairs would change with every slice, and the log-prob figure compares the same pairs.
    record = fit(job, "select", left, end, tokenizer, None, progress, args=args, segment_weights=weights, in_order=True)
    if distributed.is_main():
        slice_record = {
            "slice": index,
            "steps": [start, end],
            "pairs_fingerprint": job.fingerprint,
            "pairs_trained": notes["pairs_trained"],
            "pairs_dropped_too_long": notes["pairs_dropped_too_long"],
            "weights_sha256": weights_sha256(weights) if weights is not None else None,
            "timings": timing.take(),
        }
        write_json_atomic(done, slice_record)
        if index > 0:  # slice index is sampled and trained: the weights it was sampled from are not needed again
            shutil.rmtree(job.run.slice_weights(job.iteration, start), ignore_errors=True)
    distributed.barrier()
    if not last:
        return
    job.step_reference = None
    release_memory()
    if distributed.is_main():
        slices = [read_json(job.slice_work(j) / "done.json") for j in range(plan.count)]
        notes["semi_online"] = {"resample_every": plan.every, "slices": slices}
        for count in ("pairs_trained", "pairs_dropped_too_long"):
            notes[count] = sum(s[count] for s in slices)
        # M_T is of the iteration's pairs: every slice's, as the last slice's build published them.
        manifest = read_json(job.run.manifest(job.iteration))
        job.identity = {**job.identity, "pairs_fingerprint": manifest["pairs_fingerprint"]}
        with timing.phase("save"):
            write_model(job, tokenizer, record, record, notes, notes["pairs_trained"])


def segment_rows(rows: list[dict], steps: int, batch_size: int, seed: int, index: int) -> list[dict]:
    """A slice's rows in the order its `steps` steps train on them: a seeded shuffle, cycled to steps x batch_size
    rows (the sampler reads them in order), so that a run resumed within the slice trains on the same batches."""
    order = list(range(len(rows)))
    random.Random(f"{seed}:slice-{index}").shuffle(order)
    return [rows[order[i % len(order)]] for i in range(steps * batch_size)]


def _resume_point(job: TrainJob, folder: Path, plan, index: int) -> int:
    """The step this slice's training starts at: its first, or a checkpoint within it after a kill. Slice J > 0
    goes on from the checkpoint at its first step, the weights its samples came from."""
    start = plan.steps(index)[0]
    if distributed.is_main():  # it deletes a checkpoint written half; then every process finds the same one
        last_complete_checkpoint(folder / "checkpoints")
    distributed.barrier()
    checkpoint = last_complete_checkpoint(folder / "checkpoints")
    step = int(Path(checkpoint).name.split("-")[1]) if checkpoint else 0
    if index == 0:
        return step
    previous = job.slice_work(index - 1) / "done.json"
    if not previous.is_file() or checkpoint is None:
        raise RunFolderError(
            f"slice {index} of iteration {job.iteration} goes on from slice {index - 1}'s training, which "
            f"{job.work} does not hold; train it first (`irpo train --iter {job.iteration} --slice {index - 1}`)"
        )
    sampled_from = read_json(job.run.slice(job.iteration, index) / "record.json")["weights_sha256"]
    if read_json(previous).get("weights_sha256") != sampled_from:
        raise RunFolderError(
            f"slice {index} of iteration {job.iteration} was sampled from other weights than slice {index - 1}'s "
            f"training ended with (it was trained again); build slice {index} again: `irpo data build --iter "
            f"{job.iteration} --slice {index}` samples it from the new weights"
        )
    if step < start:
        raise RunFolderError(f"{checkpoint} is at step {step}, before slice {index}'s first step {start}")
    return step
