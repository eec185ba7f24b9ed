"""irpo: what every stage of Iterative RPO stands on, and what a library user imports.

    from irpo.card_loader import load_card  # the recipe card, validated
    from irpo.tasks import get_task          # GSM8K, MATH, ARC, the demo: questions, prompts, gold answers
    from irpo.grading import grade           # the reward's grader, which also scores the evaluation

The stages stand beside each other on this floor and import nothing of each other: irpo_data (build:
sample, grade, pair, publish), irpo_train (train M_t), irpo_eval (evaluate; shipped from evals/).
irpo_run holds the `irpo` command and the loop, the one package that imports the stages. This
package imports none of them. docs/architecture.md draws the picture.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("irpo")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"
