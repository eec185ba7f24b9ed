"""models/M_T/ in one rename: the weights of the selected step (LoRA merged), the files of the run that
made them, the selection's record, logps.png and train_manifest.json, written last."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from irpo import __version__, timing
from irpo.hardware import describe
from irpo.objectives import OBJECTIVES
from irpo.records import TrainManifest
from irpo.runs import CHECKPOINT_CHOICE, TRAIN_MANIFEST, atomic_dir
from irpo_train.job import TrainJob
from irpo_train.plots import plot_logps

log = logging.getLogger(__name__)


def final_model(job: TrainJob, phase_dir: Path):
    """The phase's model (its best step, else its last), merged to plain weights if trained with LoRA."""
    folder = phase_dir / "best" if (phase_dir / "best").is_dir() else phase_dir / "last"
    if folder.name == "last" and (phase_dir / CHECKPOINT_CHOICE).is_file():
        log.warning("no held-out evaluation picked a step; keeping the last step's model")
    trust = job.card.model.trust_remote_code
    if job.cfg.lora:
        from peft import PeftModel  # here: only LoRA runs pay for importing peft

        base = AutoModelForCausalLM.from_pretrained(job.start.path, dtype=torch.float32, trust_remote_code=trust)
        return PeftModel.from_pretrained(base, folder).merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=trust)


def write_model(job: TrainJob, tokenizer, selection: dict, final: dict, notes: dict, rows_trained: int) -> None:
    """M_T/ in one rename: weights, the files of the run that made them, the selection's record, manifest."""
    select_dir, final_dir = job.work / "select", job.work / final["phase"]
    best = selection["best"]
    model = final_model(job, final_dir)
    with atomic_dir(job.out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in ("metrics.jsonl", "probe.jsonl"):
            if (final_dir / name).is_file():
                shutil.copy2(final_dir / name, tmp / name)
        for name in (CHECKPOINT_CHOICE,):
            if (select_dir / name).is_file():
                shutil.copy2(select_dir / name, tmp / name)
        for name in ("ref_logps.parquet", "ref_logps.json"):
            if (job.work / name).is_file():
                shutil.copy2(job.work / name, tmp / name)
        if final is not selection and final["phase"] != "select":
            (tmp / "select").mkdir()
            for name in ("metrics.jsonl", CHECKPOINT_CHOICE, "done.json"):
                if (select_dir / name).is_file():
                    shutil.copy2(select_dir / name, tmp / "select" / name)
        retrained = final["phase"] == "retrain"
        title = f"{job.out_dir.name}, objective {job.cfg.objective}" + (
            f", retrained {final['steps']} steps" if retrained else ""
        )
        plot_logps(tmp, job.cfg.beta, title=title)
        why = "highest greedy accuracy on the held-out questions; earliest step among ties"
        if retrained:
            why += f", then retrained from {job.start.spec} on all pairs for that many steps"
        TrainManifest(
            **job.identity,
            irpo_version=__version__,
            iteration=job.iteration,
            reference=job.reference.spec,
            fixed_reference_weights_sha256=job.reference.weights_sha256 if job.fixed_reference else None,
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
        ).write(tmp / TRAIN_MANIFEST)
    shutil.rmtree(job.work)  # checkpoints are large; everything worth keeping is in M_T/
    log.info(
        "%s (%s) written to %s (step %s selected%s)",
        job.out_dir.name,
        job.cfg.objective,
        job.out_dir,
        best and best["step"],
        ", retrained on all pairs" if retrained else "",
    )
