"""`irpo eval` over a run: every model M_0 … M_T (and each ablation) on the card's test set, then the leaderboard.

    base model (M_0), models/M_t/, models/M_t-ABLATION/ ─► evals/MODEL.json ─► leaderboard.{md,json,png}

M_0 is the card's base model; M_t (t ≥ 1) is every finished `models/M_t/` (one with its
train_manifest.json), and M_t-OBJECTIVE every finished ablation (`irpo run --ablations`).
Each model's result is written as soon as it is computed, so a crash or Ctrl-C loses at most
the model in flight, and a rerun reuses every result whose model and settings match.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from irpo.card import Card
from irpo.errors import RunFolderError
from irpo.hub import push_files
from irpo.models import ResolvedModel, resolve_model
from irpo.records import TrainManifest
from irpo.runs import TRAIN_MANIFEST, RunFolder
from irpo.tracking import Tracker, open_tracker
from irpo_eval.evaluate import EvalSettings, evaluate_model
from irpo_eval.leaderboard import Entry, build_leaderboard, write_leaderboard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunModel:
    name: str  # "M_0", "M_1", "M_1-dpo": its evals/NAME.json
    iteration: int
    model: ResolvedModel
    objective: str | None = None
    ablation: bool = False
    pairs_fingerprint: str | None = None


def run_models(card: Card, run: RunFolder, max_iteration: int | None = None) -> list[RunModel]:
    """M_0 and every trained model of the run (iteration <= max_iteration), main line first."""
    if not run.root.is_dir():
        raise RunFolderError(
            f"no run folder {run.root}; run `irpo data build` and `irpo train` first, or pass --model PATH"
        )
    trained = []
    for folder in sorted(run.models.glob("M_*")):
        match = re.fullmatch(r"M_(\d+)(?:-(\w+))?", folder.name)
        manifest = folder / TRAIN_MANIFEST
        if not match or not manifest.is_file() or (max_iteration is not None and int(match.group(1)) > max_iteration):
            continue
        info = TrainManifest.from_json(manifest)
        # An ablation is named by its folder (dpo_nll_2x trains dpo_nll on twice the pairs).
        objective = match.group(2) or info.objective
        model = resolve_model(str(folder))
        trained.append(
            RunModel(
                folder.name,
                int(match.group(1)),
                model,
                objective,
                match.group(2) is not None,
                info.pairs_fingerprint,
            )
        )
    if not any(not m.ablation for m in trained):
        raise RunFolderError(
            f"{run.root} has no trained models yet; run `irpo train --card {card.name} --iter 1` first "
            f"(or evaluate the base model alone with `irpo eval --model PATH --task {card.task.name}`)"
        )
    base = resolve_model(card.model.base, card.model.revision, card.model.trust_remote_code)
    return [RunModel("M_0", 0, base)] + sorted(trained, key=lambda m: (m.iteration, m.ablation, m.name))


def evaluate_run(
    card: Card,
    runs_dir: str | Path = "runs",
    settings: EvalSettings | None = None,
    push_to_hub: str | None = None,
    log_samples: bool = False,
    max_iteration: int | None = None,
    private: bool | None = None,
) -> list[Path]:
    """Evaluate every model of the card's run; write and return the leaderboard files."""
    run = RunFolder.for_card(card, runs_dir)
    settings = settings or EvalSettings.from_card(card)
    models = run_models(card, run, max_iteration)
    evals, entries = run.evals, []
    with open_tracker(card, run, "eval") as tracker:
        for m in models:
            entries.append(_evaluate(m, run, settings, log_samples, tracker))
    paths = write_leaderboard(build_leaderboard(entries), run.root)
    if push_to_hub:
        files = {f"evals/{p.name}": p for p in sorted(evals.glob("M_*.json"))}
        files.update({p.name: p for p in paths})
        push_files(
            push_to_hub,
            files,
            f"irpo: leaderboard of run {card.name}",
            retry=f"irpo eval --card {card.name} --push-to-hub {push_to_hub}",
            private=private,
            run_root=run.root,
        )
    return paths


def _evaluate(m: RunModel, run: RunFolder, settings: EvalSettings, log_samples: bool, tracker: Tracker) -> Entry:
    log.info("evaluating %s (%s) on %s", m.name, m.model.spec, settings.task)
    samples = run.evals / f"{m.name}.samples.jsonl" if log_samples else None
    record = evaluate_model(m.model, settings, run.eval_record(m.name), samples, run.eval_verdicts(m.name))
    log.info(
        "%s: greedy %.1f%%, maj@%d %.1f%%, pass@%d %.1f%% on %d questions",
        m.name,
        100 * record.greedy,
        settings.maj_k,
        100 * record.maj_at_k,
        settings.maj_k,
        100 * record.pass_at_k,
        record.questions,
    )
    # The main line is one curve over iterations (M_0 at step 0); an ablation is a point of its own.
    prefix = f"eval/{m.name}" if m.ablation else "eval"
    results = {"greedy": record.greedy, "greedy_strict": record.greedy_strict, "maj_at_k": record.maj_at_k}
    tracker.log({f"{prefix}/{k}": v for k, v in results.items()}, m.iteration)
    return Entry(m.name, m.iteration, record, m.objective, m.ablation, m.pairs_fingerprint)
