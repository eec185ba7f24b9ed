"""`irpo-eval` over a run: every model M_0 … M_T on the card's test set, then the leaderboard.

    card's base model (M_0), runs/NAME/models/M_t/ ─► evals/M_t.json ─► leaderboard.{md,json,png}

M_0 is the card's base model; M_t (t ≥ 1) is every finished `models/M_t/` (one with its
train_manifest.json). Each model's result is written as soon as it is computed, so a crash or
Ctrl-C loses at most the model in flight, and a rerun reuses every result whose model and
settings match.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from irpo_data.card import Card
from irpo_data.models import ResolvedModel, resolve_model
from irpo_data.publish import push_files
from irpo_data.runs import RunFolder
from irpo_eval.evaluate import EvalError, EvalSettings, evaluate_model
from irpo_eval.leaderboard import build_leaderboard, write_leaderboard

log = logging.getLogger(__name__)


def run_models(card: Card, run: RunFolder, max_iteration: int | None = None) -> list[tuple[int, ResolvedModel]]:
    """(t, model) for M_0 and every trained M_t of the run (t <= max_iteration), in order."""
    if not run.root.is_dir():
        raise EvalError(f"no run folder {run.root}; run `irpo-data build` and `irpo-train` first, or pass --model PATH")
    trained = sorted(
        int(m.group(1))
        for folder in (run.root / "models").glob("M_*")
        if (m := re.fullmatch(r"M_(\d+)", folder.name)) and (folder / "train_manifest.json").is_file()
    )
    trained = [t for t in trained if max_iteration is None or t <= max_iteration]
    if not trained:
        raise EvalError(
            f"{run.root} has no trained models yet; run `irpo-train --card {card.name} --iter 1` first "
            f"(or evaluate the base model alone with `irpo-eval --model PATH --task {card.task.name}`)"
        )
    base = resolve_model(card.model.base, card.model.revision, card.model.trust_remote_code)
    return [(0, base)] + [(t, resolve_model(str(run.model(t)))) for t in trained]


def evaluate_run(card: Card, runs_dir: str | Path = "runs", settings: EvalSettings | None = None,
                 push_to_hub: str | None = None, log_samples: bool = False, max_iteration: int | None = None) -> list[Path]:  # fmt: skip
    """Evaluate every model of the card's run; write and return the leaderboard files."""
    run = RunFolder.for_card(card, runs_dir)
    settings = settings or EvalSettings.from_card(card)
    models = run_models(card, run, max_iteration)
    evals, records = run.root / "evals", []
    for t, model in models:
        log.info("evaluating M_%d (%s) on %s", t, model.spec, settings.task)
        record = evaluate_model(model, settings, evals / f"M_{t}.json", evals / f"M_{t}.samples.jsonl" if log_samples else None)
        log.info(
            "M_%d: greedy %.1f%%, maj@%d %.1f%%, pass@%d %.1f%% on %d questions",
            t, 100 * record["greedy"], settings.maj_k, 100 * record["maj"], settings.maj_k, 100 * record["pass"], record["questions"],
        )  # fmt: skip
        records.append((t, record))
    paths = write_leaderboard(build_leaderboard(records), run.root)
    if push_to_hub:
        files = {f"evals/{p.name}": p for p in sorted(evals.glob("M_*.json"))}
        files.update({p.name: p for p in paths})
        push_files(push_to_hub, files, f"irpo: leaderboard of run {card.name}",
                   retry=f"irpo-eval --card {card.name} --push-to-hub {push_to_hub}")  # fmt: skip
    return paths
