"""The figure a user checks after training: how the winners' and losers' log-probs moved.

Pang et al. (2024) show that DPO alone lets the winner's log-prob fall with the loser's, while
the NLL term keeps the winner rising. Each batch holds different pairs, so raw log-probs jump
with the pairs drawn; the change against the reference, log M(y|x) - log M_ref(y|x) (the DPO
reward divided by beta), cancels that and shows the trend. Beneath: held-out accuracy per check.
"""

from __future__ import annotations

import json
from pathlib import Path


def _smooth(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i - max(0, i - window + 1) + 1) for i in range(len(values))]


def plot_logps(metrics: Path, choice: Path, out: Path, beta: float) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    history = json.loads(choice.read_text())["history"] if choice.is_file() else []
    steps = [r["step"] for r in rows]
    window = max(1, len(rows) // 10)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[2, 1])
    for key, label, color in (("reward_chosen", "chosen (correct) answers", "tab:green"), ("reward_rejected", "rejected (wrong) answers", "tab:red")):
        delta = [r[key] / beta for r in rows]
        top.plot(steps, delta, color=color, alpha=0.25)
        top.plot(steps, _smooth(delta, window), color=color, label=f"{label}, moving mean of {window}")
    top.axhline(0, color="grey", linewidth=0.8)
    top.set_ylabel("log-prob change vs reference (nats)")
    top.set_title("Iterative RPO training: chosen vs rejected log-probs")
    top.legend()
    if history:
        bottom.plot([h["step"] for h in history], [100 * h["accuracy"] for h in history], "o-", color="tab:blue")
    bottom.set_ylabel("held-out greedy accuracy (%)")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
