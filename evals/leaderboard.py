"""The run's leaderboard: one row per model M_0 … M_T, the paper's rows beside them.

    evals/M_t.json (one per model) ─► leaderboard.json (for tools)
                                    ─► leaderboard.md   (for people: percentages, ± standard error)
                                    ─► leaderboard.png  (accuracy over iterations)
"""

from __future__ import annotations

import math
from pathlib import Path

from irpo_data.runs import write_json_atomic, write_text_atomic
from irpo_eval.paper import PAPER_ROWS, SOURCE

METRICS = ("greedy", "maj", "pass", "sample_mean")


def build_leaderboard(records: list[tuple[int, dict]]) -> dict:
    """`records`: (iteration, evals/M_t.json content) for every evaluated model, M_0 first."""
    records = sorted(records, key=lambda r: r[0])
    base = records[0][1] if records and records[0][0] == 0 else None
    first = records[0][1]
    rows = []
    for iteration, record in records:
        row = {"model": f"M_{iteration}", "iteration": iteration, "spec": record["model"], "questions": record["questions"]}
        row.update({m: record[m] for m in METRICS})
        row["greedy_stderr"] = math.sqrt(record["greedy"] * (1 - record["greedy"]) / max(1, record["questions"]))
        if base is not None:
            row["delta_greedy"] = record["greedy"] - base["greedy"]
            row["delta_maj"] = record["maj"] - base["maj"]
        rows.append(row)
    settings = first["key"]["settings"]
    return {
        "task": first["task"],
        "maj_k": first["maj_k"],
        "settings": settings,
        "rows": rows,
        "paper": {"source": SOURCE, "rows": PAPER_ROWS.get(first["task"], [])},
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
        f"pass@{k} and per-sample come from the same {k} samples at temperature {s['temperature']}. "
        "± is the greedy accuracy's standard error. Δ is against M_0.",
        "",
        f"| model | greedy | maj@{k} | pass@{k} | per-sample | questions | Δ greedy | Δ maj@{k} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in board["rows"]:
        lines.append(
            f"| {r['model']} | {_pct(r['greedy'])} ± {_pct(r['greedy_stderr'])} | {_pct(r['maj'])} | {_pct(r['pass'])} "
            f"| {_pct(r['sample_mean'])} | {r['questions']} | {_pct(r.get('delta_greedy'), True)} | {_pct(r.get('delta_maj'), True)} |"
        )
    paper = board["paper"]
    lines.append("")
    if paper["rows"]:
        lines += [f"Published ({paper['source']}, full test set), for reference:", "", "| row | accuracy |", "| --- | ---: |"]
        lines += [f"| {p['label']} | {p['accuracy']:.1f} |" for p in paper["rows"]]
    else:
        lines.append(f"The paper ({paper['source']}) reports no numbers for task `{board['task']}`.")
    return "\n".join(lines) + "\n"


def plot_leaderboard(board: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    rows, k = board["rows"], board["maj_k"]
    steps = [r["iteration"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.errorbar(steps, [100 * r["greedy"] for r in rows], yerr=[100 * r["greedy_stderr"] for r in rows], marker="o", capsize=3, label="ours, greedy")
    ax.plot(steps, [100 * r["maj"] for r in rows], marker="s", label=f"ours, maj@{k}")
    curve = [p for p in board["paper"]["rows"] if p["iteration"] is not None]
    if curve:
        ax.plot([p["iteration"] for p in curve], [p["accuracy"] for p in curve], "--", color="grey", marker=".", label=f"{board['paper']['source']}, greedy")
    ax.set_xlabel("iteration (M_t)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(sorted(set(steps) | {p["iteration"] for p in curve}))
    ax.set_title(f"Iterative RPO on {board['task']}")
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(f".tmp-{out.name}")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(out)


def write_leaderboard(board: dict, folder: Path) -> list[Path]:
    paths = [folder / "leaderboard.json", folder / "leaderboard.md", folder / "leaderboard.png"]
    write_json_atomic(paths[0], board)
    write_text_atomic(paths[1], leaderboard_markdown(board))
    plot_leaderboard(board, paths[2])
    return paths
