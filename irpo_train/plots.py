"""The figure a user checks after training: how the winners' and losers' log-probs moved.

Pang et al. (2024) show that DPO alone lets the winner's log-prob fall with the loser's, while
the NLL term keeps the winner rising. Plotted is the change against the reference,
log M(y|x) - log M_ref(y|x) (the DPO reward divided by beta):
- solid, with markers: the same fixed sample of training pairs at every measurement
  (probe.jsonl), which is the paper's picture;
- faint: each step's batch just before it is trained on (metrics.jsonl): pairs not yet seen,
  so how the change carries over to new pairs.
Beneath: held-out greedy accuracy per check, the selected step marked.
"""

from __future__ import annotations

from pathlib import Path

from irpo.reading import read_json, read_jsonl
from irpo.runs import CHECKPOINT_CHOICE

SERIES = (("chosen", "chosen (correct) answers", "tab:green"), ("rejected", "rejected (wrong) answers", "tab:red"))


def _read_jsonl(path: Path) -> list[dict]:
    return read_jsonl(path)


def _smooth(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i - max(0, i - window + 1) + 1) for i in range(len(values))]


def plot_logps(folder: Path, beta: float, out: Path | None = None, title: str = "") -> Path:
    """Draw folder/logps.png (or `out`) from the folder's metrics.jsonl, probe.jsonl and checkpoint_choice.json."""
    import matplotlib  # here: training imports this module; only drawing needs matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    rows, probe = _read_jsonl(folder / "metrics.jsonl"), _read_jsonl(folder / "probe.jsonl")
    choice = read_json(folder / CHECKPOINT_CHOICE) if (folder / CHECKPOINT_CHOICE).is_file() else {}
    history, best = choice.get("history", []), (choice.get("best") or {}).get("step")
    out = out or folder / "logps.png"
    window = max(1, len(rows) // 8)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[2, 1])
    for key, label, color in SERIES:
        if probe:
            pairs = probe[0]["pairs"]
            top.plot(
                [p["step"] for p in probe],
                [p[f"{key}_change"] for p in probe],
                "o-",
                color=color,
                label=f"{label}: the same {pairs} training pairs",
            )
        if rows and f"reward_{key}" in rows[0]:  # the SFT objectives log no rewards
            delta = _smooth([r[f"reward_{key}"] / beta for r in rows], window)
            top.plot(
                [r["step"] for r in rows],
                delta,
                ":",
                color=color,
                alpha=0.6,
                label=f"{label}: each batch before its step (mean of {window})",
            )
    top.axhline(0, color="grey", linewidth=0.8)
    top.set_ylabel("log-prob change vs reference (nats)")
    top.set_title(f"Chosen vs rejected log-probs{': ' + title if title else ''}")
    top.legend(fontsize=8)
    if history:
        bottom.plot([h["step"] for h in history], [100 * h["accuracy"] for h in history], "o-", color="tab:blue")
        if best is not None:
            bottom.axvline(best, color="tab:blue", linestyle="--", linewidth=0.8, label=f"selected: step {best}")
            bottom.legend(fontsize=8)
    bottom.set_ylabel("held-out greedy accuracy (%)")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_objectives(folders: dict[str, Path], out: Path) -> Path:
    """One panel per objective (label -> model folder): the probe pairs' chosen and rejected change.

    The paper's figures 2-3 side by side: every objective is measured on the same probe pairs
    against the same reference, so the panels share their axes. Atomic: a reader never sees half a PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probes = {label: _read_jsonl(folder / "probe.jsonl") for label, folder in folders.items()}
    probes = {label: probe for label, probe in probes.items() if probe}
    if not probes:
        raise ValueError(f"no probe.jsonl in {', '.join(map(str, folders.values()))}: train with train.probe_pairs > 0")
    fig, axes = plt.subplots(1, len(probes), figsize=(3.4 * len(probes) + 0.6, 3.6), sharey=True, squeeze=False)
    for ax, (label, probe) in zip(axes[0], probes.items()):
        for key, name, color in SERIES:
            ax.plot([p["step"] for p in probe], [p[f"{key}_change"] for p in probe], "o-", color=color, label=name)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("log-prob change vs reference (nats)")
    axes[0][0].legend(fontsize=8)
    pairs = next(iter(probes.values()))[0]["pairs"]
    fig.suptitle(f"The same {pairs} training pairs under each objective", fontsize=11)
    fig.tight_layout()
    tmp = out.with_name(f".tmp-{out.name}")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    tmp.replace(out)
    return out
