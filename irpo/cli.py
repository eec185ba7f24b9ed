"""`irpo run`: build → train → eval for t = 1..T on one card, resumable."""

from __future__ import annotations

import dataclasses
import errno
import sys

import click

from irpo_data.card import ABLATIONS, Card, load_card
from irpo_data.cli import USER_ERRORS, card_option, runs_option, setup_logging
from irpo_eval.evaluate import EvalError
from irpo_train.data import PairDataError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Iterative Reasoning Preference Optimization, end to end.

    \b
    Example (the embedded demo: two iterations on 2 CPU cores):
      irpo run
    """


@main.command()
@card_option
@runs_option
@click.option(
    "--iterations", type=click.IntRange(min=1), default=None, help="Iterations T  [default: the card's iterations]"
)
@click.option(
    "--push-to-hub",
    "push_to_hub",
    metavar="ORG/NAME",
    default=None,
    help="Push each iteration's pairs (config iter_t) and the leaderboard to this dataset repo.",
)
@click.option(
    "--ablations",
    is_flag=True,
    help="Also train iteration 1's samples with every other objective (dpo, sft_winners, sft_gold) and on twice "
    "the pairs (dpo_nll_2x, sft_winners_2x), and put them on the leaderboard; for some of them set the card key "
    "instead: ablations=[dpo,sft_winners].",
)
@click.option("--quiet", is_flag=True, help="Only warnings and the summary on the terminal.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def run(card, runs_dir, iterations, push_to_hub, ablations, quiet, overrides):
    """Run the loop: for t = 1..T build iteration t's pairs from M_{t-1}, train M_t, evaluate.

    \b
    Examples:
      irpo run                                        # demo card, 2 iterations, runs/demo
      irpo run --card gsm8k --iterations 4 --push-to-hub ORG/irpo-gsm8k
      irpo run train.learning_rate=5e-6               # retrains M_1 on, reuses the pairs
      irpo run --ablations                            # + DPO, SFT on winners, SFT on gold from iter 1's pairs
      irpo run ablations=[dpo,sft_winners] --iterations 1

    The run folder is the only state: a finished stage whose manifest matches the card is
    skipped, a killed run resumes where it stopped, and a changed card key re-runs the stage
    it affects and everything after it (the log says which and why). The summary is printed
    at the end and written to runs/NAME/README.md.
    """
    setup_logging(quiet)
    try:
        from irpo.loop import run_loop
        from irpo.summary import write_summary
        from irpo_data.runs import RunFolder

        resolved = load_card(card, overrides)
        if ablations:
            resolved = dataclasses.replace(resolved, ablations=_all_ablations(resolved))
        iterations = iterations or resolved.iterations
        times = run_loop(resolved, iterations, runs_dir, push_to_hub, progress=not quiet)
        click.echo(write_summary(RunFolder.for_card(resolved, runs_dir), iterations, times.seconds))
    except (*USER_ERRORS, PairDataError, EvalError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise click.ClickException(
            f"the disk is full ({exc.filename or 'while writing'}): free some space and run the same command again; "
            "finished stages are kept and a half-written file is never taken for a finished one"
        ) from None
    except KeyboardInterrupt:
        click.echo("interrupted: finished stages are kept in the run folder; run the same command to go on", err=True)
        sys.exit(130)


def _all_ablations(card: Card) -> list[str]:
    """--ablations: every objective but the card's own, and the two twice-the-pairs baselines
    (sft_gold only where the task has gold solutions)."""
    from irpo_data.tasks import task_from_config

    chosen = [o for o in ABLATIONS if o != card.train.objective]
    if "sft_gold" in chosen and not task_from_config(card.task).has_solutions:
        click.echo(f"--ablations: skipping sft_gold, task {card.task.name} has no gold solutions", err=True)
        chosen.remove("sft_gold")
    return chosen
