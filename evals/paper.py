"""Published results of Pang et al. (2024), arXiv 2404.19733, Llama-2-70B-Chat, test accuracy (%).

Printed beside ours on the leaderboard as reference rows for the same benchmark (Tables 1-3 of
the paper). `iteration` is the model M_t the row belongs to (0 = the base model's CoT prompt);
maj@32 rows have iteration None: they are not on the greedy curve.
"""

from __future__ import annotations

SOURCE = "Pang et al. 2024, Llama-2-70B-Chat"

PAPER_ROWS: dict[str, list[dict]] = {
    "gsm8k": [
        {"label": "zero-shot CoT", "iteration": 0, "accuracy": 55.6},
        {"label": "iterative RPO, iteration 1", "iteration": 1, "accuracy": 73.1},
        {"label": "iterative RPO, iteration 2", "iteration": 2, "accuracy": 78.0},
        {"label": "iterative RPO, iteration 3", "iteration": 3, "accuracy": 81.1},
        {"label": "iterative RPO, iteration 4", "iteration": 4, "accuracy": 81.6},
        {"label": "iterative RPO, iteration 4, maj@32", "iteration": None, "accuracy": 88.7},
    ],
    "arc_challenge": [
        {"label": "zero-shot CoT", "iteration": 0, "accuracy": 77.8},
        {"label": "iterative RPO, iteration 1", "iteration": 1, "accuracy": 84.8},
        {"label": "iterative RPO, iteration 2", "iteration": 2, "accuracy": 86.2},
        {"label": "iterative RPO, iteration 3", "iteration": 3, "accuracy": 86.7},
        {"label": "iterative RPO, iteration 3, maj@32", "iteration": None, "accuracy": 87.9},
    ],
    "math": [
        {"label": "4-shot CoT", "iteration": 0, "accuracy": 12.5},
        {"label": "iterative RPO, iteration 3", "iteration": 3, "accuracy": 20.8},
        {"label": "iterative RPO, iteration 3, maj@32", "iteration": None, "accuracy": 29.1},
    ],
}
