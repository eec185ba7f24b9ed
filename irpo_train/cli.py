"""`irpo-train`: train M_T with DPO + NLL on iteration T's pairs."""

from __future__ import annotations

import json
import sys

import click

from irpo_data.card import ABLATIONS, ablation_objective, load_card
from irpo_data.cli import USER_ERRORS, card_option, iter_option, runs_option, setup_logging
from irpo_train.data import PairDataError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@card_option
@iter_option
@runs_option
@click.option(
    "--ablation",
    type=click.Choice(ABLATIONS),
    default=None,
    help="Train a side model models/M_T-OBJECTIVE with this objective from the same pairs; M_T is untouched.",
)
@click.option("--dry-run", is_flag=True, help="Print the resolved card and exit.")
@click.option("--quiet", is_flag=True, help="Only warnings and the result on the terminal.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def main(card, iteration, runs_dir, ablation, dry_run, quiet, overrides):
    """Train M_T from M_{T-1} on runs/NAME/iter_T/pairs with DPO + NLL.

    \b
    Examples:
      irpo-train                                   # demo card, iteration 1 (after irpo-data build)
      irpo-train --card gsm8k --iter 2 train.lora=true train.max_steps=2000
      irpo-train --ablation sft_winners            # the STaR baseline beside M_1, same pairs

    train.objective picks the loss: dpo_nll (the paper's, default), dpo (alpha = 0),
    sft_winners (NLL on the winners), sft_gold (NLL on the dataset's gold solutions).

    Writes runs/NAME/models/M_T/: a transformers model folder (vLLM and lm-eval load it as is)
    with metrics.jsonl, logps.png, checkpoint_choice.json and the cached reference log-probs.
    A killed run resumes from its last checkpoint when run again.
    """
    setup_logging(quiet)
    try:
        resolved = load_card(card, overrides)
        if dry_run:
            click.echo(resolved.to_yaml(), nl=False)
            return
        from irpo_train.train import train_iteration

        if ablation:  # checked as a card value would be, so sft_gold on a task without solutions says why
            load_card(card, [*overrides, f"train.objective={ablation_objective(ablation)}"])
        out = train_iteration(resolved, iteration, runs_dir, progress=not quiet, ablation=ablation)
        manifest = json.loads((out / "train_manifest.json").read_text())
        click.echo(
            f"{out} ({manifest['objective']}): step {manifest['chosen_step']} chosen, held-out accuracy "
            f"{100 * (manifest['held_out_accuracy'] or 0):.1f}%; curves in {out / 'logps.png'}"
        )
    except (*USER_ERRORS, PairDataError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted: the last checkpoint is kept; run the same command again to resume", err=True)
        sys.exit(130)
