"""runs/NAME/report.html: the run on one page, for a person to look at rather than read JSON.

    irpo report runs/demo          # any run folder: finished, partial (build only), or made by an older irpo

`irpo run` rewrites it after every stage. Everything on it is read from the run folder (the card, the
manifests, the evaluation records and verdicts, the pairs, the trainer's curves), so the report of a
resumed run is that of an uninterrupted one, and an old run folder gets one too: what it lacks (the
per-question verdicts, kept since irpo 0.1 issue 34) is said where it would be shown.

One file and no network: styles inline, charts as inline SVG drawn here, the trainer's log-prob
figure as an inline PNG. Every string from a model or a dataset goes through Jinja2's autoescape
(the SVG labels through markupsafe.escape), so a completion holding `<script>` shows as text.
"""

from __future__ import annotations

import base64
import logging
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2
import polars as pl
from markupsafe import Markup, escape

from irpo.card import TRAIN_SECTIONS, Card
from irpo.card_loader import card_from_dict
from irpo.objectives import ABLATIONS
from irpo.pairs import example_pairs
from irpo.reading import RecordError, read_json, read_parquet, read_yaml
from irpo.records import BuildManifest, EvalRecord, TrainManifest
from irpo.runs import CHECKPOINT_CHOICE, TRAIN_MANIFEST, RunFolder, write_text_atomic
from irpo.tasks import PAPER, task_class
from irpo_eval.leaderboard import paper_greedy
from irpo_run.summary import read_record, stage_records

log = logging.getLogger(__name__)

EXAMPLES = 4  # example pairs per iteration
CHANGED = 6  # test questions shown in each of "now right" and "now wrong"

# Why a question or a generation left the pairs: the build's counts (iter_t/manifest.json), in the order a reader asks.
DROPS = (
    ("dropped_truncated", "generations cut off at the token limit"),
    ("dropped_too_long", "generations over pairs.max_tokens"),
    ("dropped_not_well_formed", "generations off the prompt's format (pairs.drop_off_format)"),
    ("questions_no_correct", "questions with no winner"),
    ("questions_no_wrong", "questions with no loser"),
    ("questions_no_usable_generation", "questions with no usable generation"),
    ("questions_prompt_too_long", "questions whose prompt overflows the context"),
    ("grading_timeouts", "answers whose grading ran out of time (counted wrong)"),
    ("contaminated", "training questions also in the test set, left out"),
    # pairs.label vote or mixed (ScPO's labels): present only in such runs' manifests
    ("questions_labelled_by_vote", "questions labelled by vote (pairs.label)"),
    ("questions_vote_unanimous", "of them with fewer than two answers (no loser)"),
    ("questions_vote_tied", "of them with every answer tied (no pairs)"),
    ("vote_winner_correct", "of them with gold all the same: the vote was right"),
    ("vote_winner_judged", "of them with gold all the same: judged"),
)


@dataclass
class Model:
    name: str  # M_t or M_t-ABLATION
    iteration: int
    record: EvalRecord | None
    trained: TrainManifest | None = None
    verdicts: pl.DataFrame | None = None


@dataclass
class Iteration:
    t: int
    manifest: BuildManifest | None
    trained: TrainManifest | None
    drops: list[tuple[str, object]] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)
    held_out_chart: Markup | None = None
    logps_png: str | None = None  # base64
    timings: list[dict] = field(default_factory=list)
    slices: list[dict] = field(default_factory=list)  # a semi-online iteration's (sampling.resample_every)


def write_report(run: RunFolder) -> Path:
    """Render runs/NAME/report.html from what the run folder holds now; return its path."""
    write_text_atomic(run.report, render_report(run))
    return run.report


def render_report(run: RunFolder) -> str:
    card_path = run.card_file
    if not card_path.is_file():
        raise RecordError(f"{run.root} is not a run folder (no card.yaml); give the folder `irpo run` made")
    loader = logging.getLogger("irpo.card_loader")
    level = loader.level
    loader.setLevel(logging.ERROR)  # a run's frozen card: its renamed keys are not the user's to fix
    try:
        card = card_from_dict(read_yaml(card_path), str(card_path))
    finally:
        loader.setLevel(level)
    iterations = _iterations_present(run)
    models = _models(run, iterations)
    stages = stage_records(run, iterations[-1])
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "" if v is None else f"{100 * v:.1f}%"
    template = env.from_string(resources.files("irpo_run").joinpath("report.html.j2").read_text(encoding="utf-8"))
    main_line = [m for m in models if "-" not in m.name]
    return template.render(
        card=card,
        card_sha=card.sha256(TRAIN_SECTIONS)[:16],
        run=run,
        status=_status(run, iterations, models),
        models=models,
        maj_k=next((m.record.maj_k for m in models if m.record), None),
        accuracy_chart=_accuracy_chart(models, card),
        paper_rows=task_class(card.task.name).paper_results,
        paper_source=PAPER,
        iterations=[_iteration(run, t, stages) for t in iterations],
        changed=_changed(main_line),
        ablations=[m for m in models if m.iteration == 1 and m.trained] if any("-" in m.name for m in models) else [],
        labels={name: a.label for name, a in ABLATIONS.items()},
        drops=DROPS,
    )


def _iterations_present(run: RunFolder) -> list[int]:
    found = sorted(int(p.name[5:]) for p in run.root.glob("iter_*") if p.name[5:].isdigit())
    return found or [1]


def _read(kind, path: Path):
    try:
        return read_record(kind, path)
    except RecordError as exc:  # a damaged record is a line in the log, never a missing report
        log.warning("report: %s", exc)
        return None


def _models(run: RunFolder, iterations: list[int]) -> list[Model]:
    names = ["M_0"] + [f"M_{t}" for t in iterations] + [p.name for p in run.ablation_models(1)]
    models = []
    for name in names:
        t = int(name[2:].split("-")[0])
        trained = _read(TrainManifest, run.models / name / TRAIN_MANIFEST) if t else None
        record = _read(EvalRecord, run.eval_record(name))
        verdicts_path = run.eval_verdicts(name)
        verdicts = _read_verdicts(verdicts_path) if record and verdicts_path.is_file() else None
        if record or trained or t == 0:
            models.append(Model(name, t, record, trained, verdicts))
    return models


def _read_verdicts(path: Path) -> pl.DataFrame | None:
    try:
        return read_parquet(path, {"question_id": pl.String, "greedy_correct": pl.Boolean})
    except RecordError as exc:  # the report says these verdicts are missing; the run's records are untouched
        log.warning("report: %s", exc)
        return None


def _status(run: RunFolder, iterations: list[int], models: list[Model]) -> list[dict]:
    evaluated = {m.name for m in models if m.record}
    return [
        {
            "t": t,
            "built": run.manifest(t).is_file(),
            "trained": run.train_manifest(t).is_file(),
            "evaluated": f"M_{t}" in evaluated,
        }
        for t in iterations
    ]


def _iteration(run: RunFolder, t: int, stages: list) -> Iteration:
    """Iteration t's section; `stages`: every stage's record (irpo_run.summary.stage_records), read once."""
    it = Iteration(t, _read(BuildManifest, run.manifest(t)), _read(TrainManifest, run.train_manifest(t)))
    counts = it.manifest.counts if it.manifest else {}
    it.drops = [(label, counts[key]) for key, label in DROPS if counts.get(key) is not None]
    it.examples = example_pairs(_pairs(run.pairs(t)), EXAMPLES) if it.manifest else []
    it.slices = _slices(run, t)
    choice = _checkpoint_choice(run.model(t) / CHECKPOINT_CHOICE)
    if choice:
        best = (choice.get("best") or {}).get("step")
        it.held_out_chart = _line_chart([(h["step"], h["accuracy"]) for h in choice.get("history", [])], best)
    png = run.model(t) / "logps.png"
    if png.is_file():
        it.logps_png = base64.b64encode(png.read_bytes()).decode()
    for stage_t, stage, record in stages:
        if stage_t == t:
            for i, (phase, seconds) in enumerate(record.timings.get("seconds", {}).items()):
                peak = record.timings.get("peak_gb", {}).get(phase)
                it.timings.append({"stage": stage if i == 0 else "", "phase": phase, "seconds": seconds, "peak": peak})
    return it


def _slices(run: RunFolder, t: int) -> list[dict]:
    """A semi-online iteration's slices as built so far: steps, the weights sampled from, accuracy, pairs."""
    rows, j = [], 0
    while (run.slice(t, j) / "record.json").is_file():
        try:
            record = read_json(run.slice(t, j) / "record.json")
        except RecordError as exc:  # the table stops there; the run's files are the run's
            log.warning("report: %s", exc)
            break
        counts = record.get("counts", {})
        rows.append(
            {
                "slice": j,
                "steps": "{}-{}".format(*record["steps"]),
                "sampled_from": f"M_{t - 1}" if j == 0 else f"the weights after step {record['steps'][0]}",
                "weights": str(record.get("weights_sha256", ""))[:12],
                "sample_accuracy": counts.get("sample_accuracy"),
                "pairs": counts.get("pairs"),
                "questions": record.get("questions"),
            }
        )
        j += 1
    return rows


def _checkpoint_choice(path: Path) -> dict | None:
    try:
        return read_json(path) if path.is_file() else None
    except RecordError as exc:  # the section goes without its curve
        log.warning("report: %s", exc)
        return None


def _pairs(folder: Path) -> pl.DataFrame:
    """The pairs' train split as saved by datasets (Arrow stream files), read without importing datasets."""
    files = sorted((folder / "train").glob("data-*.arrow"))
    try:
        return pl.concat([pl.read_ipc_stream(f) for f in files], how="vertical_relaxed") if files else pl.DataFrame()
    except Exception as exc:  # noqa: BLE001  (a damaged file: the report shows no examples, says why in the log)
        log.warning("report: %s is not readable (%s); no example pairs", folder, type(exc).__name__)
        return pl.DataFrame()


def _changed(main_line: list[Model]) -> dict:
    """Test questions M_0 got wrong and the last evaluated model got right, and the reverse (greedy)."""
    evaluated = [m for m in main_line if m.record]
    if len(evaluated) < 2:
        return {"note": "shown once M_0 and a trained model are evaluated", "first": None, "last": None}
    first, last = evaluated[0], evaluated[-1]
    missing = [m.name for m in (first, last) if m.verdicts is None]
    if missing:
        return {
            "note": f"{' and '.join(missing)} have no per-question verdicts (evals/M_t.verdicts.parquet): evaluated "
            "before irpo kept them, or the file is unreadable; models evaluated from now on have them",
            "first": first.name,
            "last": last.name,
        }
    joined = first.verdicts.join(last.verdicts, on="question_id", suffix="_last").sort("question_id")
    gained = joined.filter(~pl.col("greedy_correct") & pl.col("greedy_correct_last"))
    lost = joined.filter(pl.col("greedy_correct") & ~pl.col("greedy_correct_last"))
    return {
        "note": None,
        "first": first.name,
        "last": last.name,
        "gained": gained.head(CHANGED).to_dicts(),
        "lost": lost.head(CHANGED).to_dicts(),
        "gained_count": gained.height,
        "lost_count": lost.height,
    }


# --- charts: inline SVG, every label escaped --------------------------------------------------------

SERIES = (("greedy", "greedy (flexible)", "#2b6cb0"), ("greedy_strict", "greedy (strict)", "#90cdf4"))
MAJ_COLOR, PAPER_COLOR = "#2f855a", "#dd6b20"


def _accuracy_chart(models: list[Model], card: Card) -> Markup | None:
    """Grouped bars per evaluated model: greedy flexible and strict, maj@k, and the paper's number beside."""
    evaluated = [m for m in models if m.record]
    if not evaluated:
        return None
    published = task_class(card.task.name).paper_results
    paper = any(p.metric == "greedy" and p.iteration is not None for p in published)
    k = evaluated[0].record.maj_k
    series = [*SERIES, ("maj_at_k", f"maj@{k}", MAJ_COLOR)]
    if paper:  # the benchmark has published numbers (the demo task has none)
        series.append(("paper", "paper (greedy)", PAPER_COLOR))
    bar, gap, height, top, left, legend = 20, 26, 220, 20, 40, 140
    group = bar * len(series) + gap
    width = max(left + group * len(evaluated) + 10, left + legend * len(series))  # room for the legend
    # Names wider than their group of bars (the ablations: M_1-dpo_nll_from_sft) are slanted, below the axis.
    slant = max(len(m.name) for m in evaluated) * 6 > group
    below = max(len(m.name) for m in evaluated) * 4 if slant else 0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 70 + below}" role="img" '
        f'aria-label="test accuracy per model" font-family="sans-serif" font-size="11">'
    ]
    for tick in range(0, 101, 25):
        y = top + height * (1 - tick / 100)
        parts.append(f'<line x1="{left}" x2="{width}" y1="{y}" y2="{y}" stroke="#e2e8f0"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4}" text-anchor="end" fill="#4a5568">{tick}%</text>')
    for i, m in enumerate(evaluated):
        x0 = left + i * group + gap / 2
        objective = (m.trained.ablation or m.trained.objective) if m.trained else None  # as PaperResult names it
        values = {
            "greedy": m.record.greedy,
            "greedy_strict": m.record.greedy_strict,
            "maj_at_k": m.record.maj_at_k,
            "paper": _percent(paper_greedy(published, m.iteration, objective if m.iteration else None)),
        }
        for j, (key, label, color) in enumerate(series):
            value = values[key]
            if value is None or not math.isfinite(value):
                continue
            h = height * value
            parts.append(
                f'<rect x="{x0 + j * bar}" y="{top + height - h:.1f}" width="{bar - 2}" height="{h:.1f}" '
                f'fill="{color}">'
                f"<title>{escape(m.name)}: {escape(label)} {100 * value:.1f}%</title></rect>"
            )
        x, y = x0 + bar * len(series) / 2, top + height + 16
        turn = f' transform="rotate(-35 {x} {y})" text-anchor="end"' if slant else ' text-anchor="middle"'
        parts.append(f'<text x="{x}" y="{y}"{turn}>{escape(m.name)}</text>')
    parts += _legend(series, left, top + height + 36 + below, legend)
    parts.append("</svg>")
    return Markup("".join(parts))


def _percent(value: float | None) -> float | None:
    """A paper number (percent) as our accuracies are (a fraction)."""
    return None if value is None else value / 100


def _legend(series, x0: float, y: float, step: float) -> list[str]:
    parts = []
    for j, (_, label, color) in enumerate(series):
        x = x0 + j * step
        parts.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{x + 14}" y="{y + 9}">{escape(label)}</text>')
    return parts


def _line_chart(points: list[tuple[int, float]], best: int | None) -> Markup | None:
    """The held-out accuracy at each checked step; the selected step marked."""
    if not points:
        return None
    width, height, left, top = 360, 140, 40, 10
    last = max(max(s for s, _ in points), 1)

    def xy(step, acc):
        return left + (width - left - 10) * step / last, top + height * (1 - acc)

    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(s, a) for s, a in points))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" role="img" '
        f'aria-label="held-out accuracy per step" font-family="sans-serif" font-size="11">'
    ]
    for tick in (0, 50, 100):
        y = top + height * (1 - tick / 100)
        parts.append(f'<line x1="{left}" x2="{width}" y1="{y}" y2="{y}" stroke="#e2e8f0"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4}" text-anchor="end" fill="#4a5568">{tick}%</text>')
    parts.append(f'<polyline points="{coords}" fill="none" stroke="#2b6cb0" stroke-width="2"/>')
    for step, acc in points:
        x, y = xy(step, acc)
        chosen = step == best
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{5 if chosen else 3}" fill="{PAPER_COLOR if chosen else "#2b6cb0"}">'
            f"<title>step {step}: {100 * acc:.1f}%{' (selected)' if chosen else ''}</title></circle>"
        )
    parts.append(f'<text x="{left}" y="{top + height + 28}" fill="#4a5568">training step (0 to {last})</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
