"""The figure a user checks after training: how the winners' and losers' log-probs moved.

Pang et al. (2024) show that DPO alone lets the winner's log-prob fall with the loser's, while
the NLL term keeps the winner rising. Plotted is the change against the reference,
log M(y|x) - log M_ref(y|x) (the DPO reward divided by beta):
- solid, with markers: the same fixed sample of training pairs at every measurement
  (probe.jsonl), which is the paper's picture;
- faint: each step's batch just before it is trained on (metrics.jsonl): pairs not yet seen,
  so how the change carries over to new pairs.
Beneath: held-out greedy accuracy per check, the chosen step marked.
"""

from __future__ import annotations

import json
from pathlib import Path

SERIES = (("chosen", "chosen (correct) answers", "tab:green"), ("rejected", "rejected (wrong) answers", "tab:red"))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _smooth(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i - max(0, i - window + 1) + 1) for i in range(len(values))]


def plot_logps(folder: Path, beta: float, out: Path | None = None) -> Path:
    """Draw folder/logps.png (or `out`) from the folder's metrics.jsonl, probe.jsonl and checkpoint_choice.json."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    rows, probe = _read_jsonl(folder / "metrics.jsonl"), _read_jsonl(folder / "probe.jsonl")
    choice = json.loads((folder / "checkpoint_choice.json").read_text()) if (folder / "checkpoint_choice.json").is_file() else {}
    history, best = choice.get("history", []), (choice.get("best") or {}).get("step")
    out = out or folder / "logps.png"
    window = max(1, len(rows) // 8)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[2, 1])
    for key, label, color in SERIES:
        if probe:
            pairs = probe[0]["pairs"]
            top.plot([p["step"] for p in probe], [p[f"{key}_change"] for p in probe], "o-", color=color, label=f"{label}: the same {pairs} training pairs")
        if rows:
            delta = _smooth([r[f"reward_{key}"] / beta for r in rows], window)
            top.plot([r["step"] for r in rows], delta, ":", color=color, alpha=0.6, label=f"{label}: each batch before its step (mean of {window})")
    top.axhline(0, color="grey", linewidth=0.8)
    top.set_ylabel("log-prob change vs reference (nats)")
    top.set_title("Iterative RPO training: chosen vs rejected log-probs")
    top.legend(fontsize=8)
    if history:
        bottom.plot([h["step"] for h in history], [100 * h["accuracy"] for h in history], "o-", color="tab:blue")
        if best is not None:
            bottom.axvline(best, color="tab:blue", linestyle="--", linewidth=0.8, label=f"chosen: step {best}")
            bottom.legend(fontsize=8)
    bottom.set_ylabel("held-out greedy accuracy (%)")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
