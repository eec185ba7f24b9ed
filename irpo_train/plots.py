"""The figure a user checks after training: winner and loser log-probs over steps.

Pang et al. (2024) show that DPO alone lets the winner's log-prob fall with the loser's, while
the NLL term keeps the winner rising; this plot shows which happened in your run, with the
held-out accuracy of each evaluated step beneath.
"""

from __future__ import annotations

import json
from pathlib import Path


def plot_logps(metrics: Path, choice: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    history = json.loads(choice.read_text())["history"] if choice.is_file() else []
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=[2, 1])
    steps = [r["step"] for r in rows]
    top.plot(steps, [r["logps_chosen"] for r in rows], label="chosen (correct) answers", color="tab:green")
    top.plot(steps, [r["logps_rejected"] for r in rows], label="rejected (wrong) answers", color="tab:red")
    top.set_ylabel("mean log-prob under the policy")
    top.set_title("Iterative RPO training: answer log-probs")
    top.legend()
    if history:
        bottom.plot([h["step"] for h in history], [100 * h["accuracy"] for h in history], "o-", color="tab:blue")
    bottom.set_ylabel("held-out greedy accuracy (%)")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
