"""The loop: for t = 1..T, build iteration t's pairs, train M_t, evaluate M_0..M_t.

    card ─► irpo_data.build ─► iter_t/ ─► irpo_train.train ─► models/M_t/ ─► irpo_eval ─► evals/, leaderboard
            (t = 1, 2, …: iteration t samples from M_{t-1})

Each stage runs in a fresh process of its own (irpo_run.stages), so that what one stage imported and
freed does not sit under the next one's peak; the run folder is all they share.

Every stage skips itself when its outputs exist and their manifest matches the card and its
inputs, so a rerun of a finished run does nothing and a killed run resumes where it stopped.
What changes when the card changes:
- `train.*`: M_t is retrained (its manifest hashes the train section); iteration t+1 then sees
  a new M_t and is re-sampled, and so on downstream;
- `eval.*`: results are recomputed (their key holds every eval setting);
- the sections the pairs come from (`task`, `model`, `sampling`, `pairs`, `seed`): every
  iteration depends on them, so the run starts over; the old run is set aside as runs/NAME.stale-N/.
Each of these is logged with the reason.

Ablations (card `ablations`, `irpo run --ablations`): after M_1, the same iteration-1 pairs also
train models/M_1-OBJECTIVE for each listed objective; they are evaluated with the rest, sit on
the leaderboard beside M_1, and their log-prob curves share one figure (ablations_logps.png).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from irpo.card import BUILD_SECTIONS, Card
from irpo.card_loader import CardError
from irpo.models import iteration_model
from irpo.objectives import ABLATIONS, training_order
from irpo.reading import read_json
from irpo.runs import RunFolder, set_aside
from irpo.slices import SlicePlan, slice_plan
from irpo_run.pushes import Pushes
from irpo_run.report import write_report
from irpo_run.stages import run_stage
from irpo_train.plots import plot_objectives

# The stages, each run in a fresh process (irpo_run.stages): named, so that this process never imports them.
BUILD = "irpo_data.build:build_iteration"
TRAIN = "irpo_train.train:train_iteration"
EVALUATE = "irpo_eval.run_eval:evaluate_run"
MORE_PAIRS = "irpo_data.build:build_more_pairs"  # iteration 1's samples at factor x K, for the _2x ablations
BUILD_SLICE = "irpo_data.build_slice:build_slice"  # semi-online iterations (sampling.resample_every)
TRAIN_SLICE = "irpo_train.train_slice:train_slice"

log = logging.getLogger(__name__)


@dataclass
class StageTimes:
    """Wall seconds per (iteration, stage) of this invocation; skipped stages take ~0.

    With `run`, each finished stage also rewrites the run's report.html and says so in one line.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    run: RunFolder | None = None

    def record(self, name: str, start: float) -> None:
        self.seconds[name] = round(time.perf_counter() - start, 1)
        if self.run is not None:
            log.info("finished %s in %.0f s; report: %s", name, self.seconds[name], refresh_report(self.run))


def refresh_report(run: RunFolder) -> Path | str:
    """report.html from what the run folder holds now. A report that cannot be written is a warning:
    the run's own files are complete, and `irpo report` writes it later."""
    try:
        return write_report(run)
    except Exception as exc:  # never what stops days of work
        log.warning("report.html not written (%s: %s); the run goes on", type(exc).__name__, exc)
        return "not written"


def restart_if_recipe_changed(card: Card, run: RunFolder) -> None:
    """Move the run aside when a section every iteration depends on has changed."""
    try:
        run.freeze_card(card, BUILD_SECTIONS)
    except CardError as exc:
        changes = "; ".join(p for p in exc.problems if " in the run, " in p)
        if not changes:  # e.g. an unreadable card.yaml: not a recipe change, so nothing is moved
            raise
        set_aside(run.root, f"the card changed what every iteration is built from ({changes}); starting the run over")
        run.freeze_card(card, BUILD_SECTIONS)


def set_aside_if_sampled_from_another_model(card: Card, run: RunFolder, t: int) -> None:
    """Iteration t sampled from an M_{t-1} that has since been retrained: re-sample it."""
    settings = run.samples(t) / "settings.json"
    if not settings.is_file():
        return
    current = iteration_model(card, run, t).weights_sha256
    if read_json(settings).get("weights_sha256") != current:
        set_aside(run.iteration(t), f"iteration {t} was sampled from an earlier M_{t - 1}; sampling it again")


def run_loop(
    card: Card,
    iterations: int,
    runs_dir: str | Path = "runs",
    push_to_hub: str | None = None,
    progress: bool = True,
    pushes: Pushes | None = None,
) -> StageTimes:
    """Build, train and evaluate t = 1..iterations; with `push_to_hub` (or `pushes`, already checked), each
    finished iteration and the leaderboard go to that dataset repo (irpo_run.pushes: a failed push is a
    warning, caught up later)."""
    if iterations < 1:
        raise ValueError(f"--iterations must be 1 or more, got {iterations}")
    pushes = pushes or Pushes.start(push_to_hub)  # the repo id (and access, online) before any work
    plan = slice_plan(card)  # a semi-online card that cannot run says so before any work
    run = RunFolder.for_card(card, runs_dir)
    restart_if_recipe_changed(card, run)
    times = StageTimes(run=run)
    for t in range(1, iterations + 1):
        start = time.perf_counter()
        if plan is not None:
            run_slices(card, t, plan, runs_dir, times, progress)
            pushes.catch_up(run, t)
        else:
            if t > 1:
                set_aside_if_sampled_from_another_model(card, run, t)
            run_stage(BUILD, card, t, runs_dir, progress=progress)
            times.record(f"iter_{t}/build", start)
            pushes.catch_up(run, t)  # this iteration, and any earlier one the repo does not have yet

            start = time.perf_counter()
            run_stage(TRAIN, card, t, runs_dir, progress=progress)
            times.record(f"iter_{t}/train", start)
        if t == 1 and card.ablations:
            train_ablations(card, run, runs_dir, times, progress)

        start = time.perf_counter()
        # The stage resolves its settings itself: resolving the dtype imports torch, which this process never does.
        run_stage(EVALUATE, card, runs_dir, max_iteration=t)
        times.record(f"iter_{t}/eval", start)
        pushes.models(run, t)  # M_t after its evaluation (its card has the results), and any M_1..M_t the repo lacks
    pushes.leaderboard(run, card.name)  # once, with the last iteration's evaluation
    if pushes.failed:
        log.warning(
            "not pushed in this run: %s; run it again with the same push options to catch up", ", ".join(pushes.failed)
        )
    return times


def run_slices(card: Card, t: int, plan: SlicePlan, runs_dir, times: StageTimes, progress: bool) -> None:
    """A semi-online iteration: slice j built from the weights training has reached, then trained on, in turn."""
    for j in range(plan.count):
        start = time.perf_counter()
        run_stage(BUILD_SLICE, card, t, j, runs_dir, progress=progress)
        times.record(f"iter_{t}/slice {j} build", start)
        start = time.perf_counter()
        run_stage(TRAIN_SLICE, card, t, j, runs_dir, progress=progress)
        times.record(f"iter_{t}/slice {j} train", start)


def train_ablations(card: Card, run: RunFolder, runs_dir: str | Path, times: StageTimes, progress: bool) -> None:
    """Train models/M_1-NAME for each of card.ablations from iteration 1's samples; draw their curves."""
    ablations = training_order(card.ablations, card.train.objective)
    if any(ABLATIONS[a].pairs_factor == 2 for a in ablations):  # the build pairs the same samples again, at 2K
        start = time.perf_counter()
        run_stage(MORE_PAIRS, card, 1, 2, runs_dir)
        times.record("iter_1/pairs 2x", start)
    for name in ablations:
        start = time.perf_counter()
        log.info("ablation: training M_1-%s (%s) from iteration 1's samples", name, ABLATIONS[name].label)
        run_stage(TRAIN, card, 1, runs_dir, progress=progress, ablation=name)
        times.record(f"iter_1/train {name}", start)
    if card.train.probe_pairs == 0:
        log.warning("train.probe_pairs=0: no log-prob curves to compare the objectives with")
        return
    folders = {ABLATIONS[card.train.objective].label: run.model(1)}
    folders.update({ABLATIONS[a].label: run.model(1, a) for a in ablations})
    figure = plot_objectives(folders, run.ablations_figure)
    log.info("log-prob curves of M_1 and its ablations: %s", figure)
