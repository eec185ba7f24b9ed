"""The run summary: one table per run, read from the run folder's manifests and results.

Written to runs/NAME/README.md and printed at the end of `irpo run`. Every number comes from a
record a stage wrote (iter_t/manifest.json, models/M_t/train_manifest.json, evals/M_t.json), so
the summary of a resumed run is the same as that of an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

from irpo.records import BuildManifest, EvalRecord, Record, TrainManifest
from irpo.runs import TRAIN_MANIFEST, RunFolder, write_text_atomic


def read_record(kind: type[Record], path: Path):
    """The record in `path`, or None where the stage has not written it (a damaged one: RecordError)."""
    return kind.from_json(path) if path.is_file() else None


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _cell(value) -> str:
    return "" if value is None else str(value)


def run_summary(run: RunFolder, iterations: int, times: dict[str, float] | None = None) -> str:
    evals = {t: read_record(EvalRecord, run.eval_record(f"M_{t}")) for t in range(iterations + 1)}
    k = next((e.maj_k for e in evals.values() if e), None)
    lines = [
        f"# Run `{run.root.name}`",
        "",
        "| iteration | samples | sample accuracy | pairs (questions) | losers off-format / gold winners "
        "| dropped: truncated / too long | steps (selected) | held-out acc. | test greedy | test maj@k |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    if evals.get(0):
        base = evals[0]
        lines.append(f"| M_0 (base) | | | | | | | | {_pct(base.greedy)} | {_pct(base.maj_at_k)} |")
    for t in range(1, iterations + 1):
        manifest = read_record(BuildManifest, run.manifest(t))
        trained = read_record(TrainManifest, run.train_manifest(t))
        counts = manifest.counts if manifest else {}
        result = evals.get(t)
        steps = f"{trained.selection_steps} ({_cell(trained.selected_step)})" if trained else ""
        lines.append(
            f"| {t} → M_{t} | {_cell(counts.get('generations'))} | {_pct(counts.get('sample_accuracy'))} "
            f"| {_cell(counts.get('pairs'))} ({_cell(counts.get('questions_paired'))}) "
            f"| {_cell(counts.get('losers_off_format'))} / {_cell(counts.get('gold_winners'))} "
            f"| {_cell(counts.get('dropped_truncated'))} / {_cell(counts.get('dropped_too_long'))} | {steps} "
            f"| {_pct(trained and trained.held_out_accuracy)} | {_pct(result and result.greedy)} "
            f"| {_pct(result and result.maj_at_k)} |"
        )
    lines += _ablation_rows(run)
    lines += ["", f"maj@k: k = {k}." if k else "", "", "Files:", ""]
    lines.append("- [the report](report.html): the run on one page, charts and example pairs")
    for t in range(1, iterations + 1):
        lines.append(f"- iteration {t}: [dataset card](iter_{t}/README.md), [log-prob curves](models/M_{t}/logps.png)")
    lines.append("- [leaderboard](leaderboard.md) and its [plot](leaderboard.png)")
    if run.ablations_figure.is_file():
        lines.append("- [log-prob curves of M_1 and its ablations](ablations_logps.png)")
    lines += _timing_rows(run, iterations)
    if times:
        lines += ["", "Wall time of the last `irpo run` (skipped stages take about 0 s):", ""]
        lines += ["| stage | seconds |", "| --- | ---: |"]
        lines += [f"| {name} | {seconds:.0f} |" for name, seconds in times.items()]
        lines.append(f"| total | {sum(times.values()):.0f} |")
    return "\n".join(lines) + "\n"


def _ablation_rows(run: RunFolder) -> list[str]:
    """M_1 beside its ablations: objective, pairs fingerprint, checkpoint, held-out and test accuracy."""
    folders = [run.model(1), *run.ablation_models(1)]
    trained = [(f.name, m) for f in folders if (m := read_record(TrainManifest, f / TRAIN_MANIFEST))]
    if len(trained) < 2:
        return []
    lines = [
        "",
        "Iteration 1's samples under each objective:",
        "",
        "| model | objective | trained on | pairs fingerprint | steps (selected) | held-out acc. | test greedy "
        "| test maj@k |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, m in trained:
        result = read_record(EvalRecord, run.eval_record(name))
        lines.append(
            f"| {name} | {m.objective} | {m.trained_on} | {m.pairs_fingerprint[:16]} "
            f"| {m.selection_steps} ({_cell(m.selected_step)}) | {_pct(m.held_out_accuracy)} "
            f"| {_pct(result and result.greedy)} | {_pct(result and result.maj_at_k)} |"
        )
    return lines


def stage_records(run: RunFolder, iterations: int) -> list[tuple[int, str, Record]]:
    """(iteration, stage, record) of every stage that wrote one, in the loop's order."""
    stages = []
    for t in range(1, iterations + 1):
        stages.append((t, "build", read_record(BuildManifest, run.manifest(t))))
        stages.append((t, f"train M_{t}", read_record(TrainManifest, run.train_manifest(t))))
        if t == 1:
            for folder in run.ablation_models(1):
                stages.append((1, f"train {folder.name}", read_record(TrainManifest, folder / TRAIN_MANIFEST)))
        for name in ([f"M_{t - 1}"] if t == 1 else []) + [f"M_{t}"]:
            stages.append((t, f"eval {name}", read_record(EvalRecord, run.eval_record(name))))
    if run.evals.is_dir():
        for path in sorted(run.evals.glob("M_1-*.json")):
            stages.append((1, f"eval {path.stem}", read_record(EvalRecord, path)))
    return [(t, stage, record) for t, stage, record in stages if record is not None and record.timings]


def _timing_rows(run: RunFolder, iterations: int) -> list[str]:
    """Where each stage's time went (irpo.timing, from its record), and the vLLM starts per iteration."""
    stages = stage_records(run, iterations)
    if not stages:
        return []
    lines = [
        "",
        "Where the time went (each stage's last run, from its record; an indented phase is part of the one above;"
        " peak memory: resident set of the process and its vLLM engine processes while the phase ran):",
        "",
        "| stage | phase | seconds | peak memory (GB) |",
        "| --- | --- | ---: | ---: |",
    ]
    starts: dict[int, int] = {}
    for t, stage, record in stages:
        peaks = record.timings.get("peak_gb", {})  # records before 2026-12-02 have none
        for i, (name, seconds) in enumerate(record.timings.get("seconds", {}).items()):
            label = "&nbsp;&nbsp;" * name.count(" / ") + name.rsplit(" / ", 1)[-1]
            peak = f"{peaks[name]:.2f}" if name in peaks else ""
            lines.append(f"| {f'iteration {t}: {stage}' if i == 0 else ''} | {label} | {seconds:.1f} | {peak} |")
        starts[t] = starts.get(t, 0) + record.timings.get("counts", {}).get("vllm starts", 0)
    lines += ["", "vLLM engine starts: " + ", ".join(f"iteration {t} {n}" for t, n in starts.items()) + "."]
    return lines


def write_summary(run: RunFolder, iterations: int, times: dict[str, float] | None = None) -> str:
    text = run_summary(run, iterations, times)
    write_text_atomic(run.summary, text)
    return text
