"""irpo eval: lm-eval tasks scored by irpo_data's grader, majority vote, leaderboards.

Shipped from the folder `evals/` under the import name `irpo_eval` (see pyproject.toml).
"""
