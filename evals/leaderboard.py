"""The run's leaderboard: one row per model M_0 … M_T and per ablation, the paper's rows beside them.

evals/MODEL.json (one per model) ─► leaderboard.json (for tools)
                                  ─► leaderboard.md   (for people: percentages, ± standard error)
                                  ─► leaderboard.png  (accuracy over iterations, ablations as points)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from irpo.objectives import ABLATIONS
from irpo.records import EvalRecord
from irpo.runs import LEADERBOARD, write_json_atomic, write_text_atomic
from irpo.tasks import PAPER, PaperResult, task_class

LABELS = {name: ablation.label for name, ablation in ABLATIONS.items()}  # objective or ablation -> its label

METRICS = ("greedy", "greedy_strict", "maj_at_k", "pass_at_k", "sample_accuracy")  # EvalRecord's names


@dataclass(frozen=True)
class Entry:
    """One evaluated model of a run."""

    model: str  # "M_0", "M_1", "M_1-dpo" (models/ folder name; M_0 is the card's base model)
    iteration: int
    record: EvalRecord  # its evals/MODEL.json
    objective: str | None = None  # train.objective it was trained with; None for M_0
    ablation: bool = False  # a side model trained from iteration t's pairs, not on the main line
    pairs_fingerprint: str | None = None  # the pair dataset it was trained from


def paper_greedy(published: tuple[PaperResult, ...], iteration: int, objective: str | None) -> float | None:
    """The paper's greedy accuracy for our row (M_t trained with `objective`), if it reports one."""
    for result in published:
        if result.metric == "greedy" and result.iteration == iteration and result.objective == objective:
            return result.accuracy
    return None


def build_leaderboard(entries: list[Entry]) -> dict:
    """The leaderboard of every evaluated model: the main line by iteration, each ablation after its M_t."""
    entries = sorted(entries, key=lambda e: (e.iteration, e.ablation, e.model))
    base = entries[0].record if entries and entries[0].iteration == 0 else None
    first = entries[0].record
    published = task_class(first.task).paper_results
    rows = []
    for e in entries:
        record = e.record
        row = {
            "model": e.model,
            "iteration": e.iteration,
            "objective": e.objective,
            "ablation": e.ablation,
            "spec": record.model,
            "questions": record.questions,
            "pairs_fingerprint": e.pairs_fingerprint,
        }
        row.update({m: getattr(record, m) for m in METRICS})  # greedy_strict: None in results before 2026-12
        row["greedy_stderr"] = math.sqrt(record.greedy * (1 - record.greedy) / max(1, record.questions))
        if base is not None:
            row["delta_greedy"] = record.greedy - base.greedy
            row["delta_maj_at_k"] = record.maj_at_k - base.maj_at_k
        row["paper_greedy"] = paper_greedy(published, e.iteration, e.objective)
        rows.append(row)
    settings = first.key["settings"]
    return {
        "task": first.task,
        "maj_k": first.maj_k,
        "settings": settings,
        "rows": rows,
        "paper": {"source": PAPER, "rows": [dataclasses.asdict(p) for p in published]},
    }


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def leaderboard_markdown(board: dict) -> str:
    k, s = board["maj_k"], board["settings"]
    lines = [
        f"# Leaderboard: {board['task']}",
        "",
        f"Test accuracy (%) on {board['rows'][0]['questions']} questions of split `{s['split']}`"
        f"{' (first ' + str(s['limit']) + ')' if s['limit'] else ''}. Greedy is temperature 0; maj@{k}, "
        f"pass@{k} and the sample accuracy come from the same {k} samples at temperature {s['temperature']}. "
        "± is the greedy accuracy's standard error. Δ is against M_0. Greedy counts a right answer in any "
        "recognised style (flexible); strict only one stated in the prompt's format, the paper's exact match.",
        "",
        f"| model | trained with | greedy | greedy, strict | maj@{k} | pass@{k} | sample accuracy | questions "
        f"| Δ greedy | Δ maj@{k} | paper, greedy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in board["rows"]:
        trained = LABELS.get(
            r.get("objective"), "base model (CoT prompt)" if r["iteration"] == 0 else r.get("objective") or ""
        )
        paper_value = r.get("paper_greedy")
        lines.append(
            f"| {r['model']} | {trained} | {_pct(r['greedy'])} ± {_pct(r['greedy_stderr'])} | "
            f"{_pct(r.get('greedy_strict'))} "
            f"| {_pct(r['maj_at_k'])} | {_pct(r['pass_at_k'])} "
            f"| {_pct(r['sample_accuracy'])} | {r['questions']} | {_pct(r.get('delta_greedy'), True)} | "
            f"{_pct(r.get('delta_maj_at_k'), True)} "
            f"| {'' if paper_value is None else f'{paper_value:.1f}'} |"
        )
    ablations = [r for r in board["rows"] if r.get("ablation")]
    if ablations:
        lines += ["", _same_pairs_note(board["rows"], ablations)]
    paper = board["paper"]
    lines.append("")
    if paper["rows"]:
        lines += [
            f'Published ({paper["source"]}, full test set), for reference; "paper, greedy" above is the row '
            "trained the same way:",
            "",
            "| row | metric | accuracy |",
            "| --- | --- | ---: |",
        ]
        lines += [f"| {p['label']} | {p['metric']} | {p['accuracy']:.1f} |" for p in paper["rows"]]
    else:
        lines.append(f"The paper ({paper['source']}) reports no numbers for task `{board['task']}`.")
    return "\n".join(lines) + "\n"


def _factor(row: dict) -> int:
    """The pairs factor a row's model was trained at (1: the iteration's own pairs)."""
    ablation = ABLATIONS.get(str(row.get("objective")))
    return ablation.pairs_factor if ablation else 1


def _same_pairs_note(rows: list[dict], ablations: list[dict]) -> str:
    """Whether M_t and its ablations were trained from one pair dataset (the _2x ones: from the same
    samples, paired again with twice the pairs, so their own dataset is expected)."""
    t = ablations[0]["iteration"]
    same_pairs = [r for r in rows if r["iteration"] == t and _factor(r) == 1]
    short = sorted({str(r.get("pairs_fingerprint"))[:16] for r in same_pairs})
    note = (
        f"all from the same pair dataset (fingerprint {short[0]})"
        if len(short) == 1
        else f"WARNING: from different pair datasets ({', '.join(short)})"
    )
    if any(_factor(r) > 1 for r in ablations):
        note += "; the twice-the-pairs ones from the same samples, paired again with 2K pairs per question"
    if any(r.get("objective") in ABLATIONS and ABLATIONS[r["objective"]].objective.needs_gold for r in ablations):
        note += "; SFT on gold trains on the gold solutions of the questions those pairs were sampled for"
    return f"M_{t} and its ablations: {note}."


def plot_leaderboard(board: dict, out: Path) -> None:
    import matplotlib  # here: the leaderboard's table is written without it; only the figure needs it

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    k = board["maj_k"]
    rows = [r for r in board["rows"] if not r.get("ablation")]
    steps = [r["iteration"] for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.errorbar(
        steps,
        [100 * r["greedy"] for r in rows],
        yerr=[100 * r["greedy_stderr"] for r in rows],
        marker="o",
        capsize=3,
        label="ours, greedy" + (f": {LABELS[rows[-1]['objective']]}" if rows[-1].get("objective") in LABELS else ""),
    )
    ax.plot(steps, [100 * r["maj_at_k"] for r in rows], marker="s", label=f"ours, maj@{k}")
    # Ablations: one point each beside their iteration, spread so that error bars do not overlap.
    ablations = [r for r in board["rows"] if r.get("ablation")]
    for i, (r, marker) in enumerate(zip(ablations, "D^v<>phX*")):
        x = r["iteration"] + 0.08 * (i + 1)
        ax.errorbar(
            [x],
            [100 * r["greedy"]],
            yerr=[100 * r["greedy_stderr"]],
            marker=marker,
            capsize=3,
            linestyle="none",
            label=f"ours, greedy: {LABELS.get(r['objective'], r['objective'])}",
        )
    paper = board["paper"]["rows"]
    curve = [p for p in paper if p["iteration"] is not None and p["objective"] in (None, "dpo_nll")]
    if curve:
        ax.plot(
            [p["iteration"] for p in curve],
            [p["accuracy"] for p in curve],
            "--",
            color="grey",
            marker=".",
            label=f"{board['paper']['source']}, greedy",
        )
    for p in paper:  # the paper's baselines that have a counterpart here, as labelled grey points
        if p["iteration"] is not None and p["objective"] not in (None, "dpo_nll"):
            ax.plot([p["iteration"]], [p["accuracy"]], "x", color="grey")
            ax.annotate(
                LABELS[p["objective"]],
                (p["iteration"], p["accuracy"]),
                fontsize=7,
                color="grey",
                xytext=(4, -3),
                textcoords="offset points",
            )
    ax.set_xlabel("iteration (M_t)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(sorted(set(steps) | {p["iteration"] for p in curve}))
    ax.set_title(f"Iterative RPO on {board['task']}")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    tmp = out.with_name(f".tmp-{out.name}")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(out)


def write_leaderboard(board: dict, folder: Path) -> list[Path]:
    paths = [folder / name for name in LEADERBOARD]
    write_json_atomic(paths[0], board)
    write_text_atomic(paths[1], leaderboard_markdown(board))
    plot_leaderboard(board, paths[2])
    return paths
