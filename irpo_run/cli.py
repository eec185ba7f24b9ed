"""`irpo`: one command for the whole toolkit.

    irpo data build|push|tasks   the pair datasets (irpo_data; alias irpo-data)
    irpo train                   M_t from iteration t's pairs (irpo_train; alias irpo-train)
    irpo eval                    test accuracy and the leaderboard (irpo_eval; alias irpo-eval)
    irpo run                     build -> train -> eval for t = 1..T, resumable (this package)
    irpo report RUN              the run on one page: runs/NAME/report.html

Every subcommand takes --card, KEY=VALUE overrides and --dry-run; errors a user can fix cross one
boundary (irpo.command) and print as one line.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import click

from irpo.card import Card
from irpo.command import (
    Group,
    card_option,
    dry_run_option,
    overrides_argument,
    private_option,
    quiet_option,
    ray_option,
    resolve_card,
    runs_option,
    setup_logging,
    show_dry_run,
)
from irpo.errors import RunFolderError
from irpo.lock import run_lock
from irpo.objectives import ABLATIONS
from irpo.reaper import start_reaper
from irpo.runs import RunFolder
from irpo.tasks import task_from_config
from irpo_data.cli import main as data_group
from irpo_eval.cli import main as eval_command
from irpo_run.loop import refresh_report, run_loop
from irpo_run.pushes import Pushes
from irpo_run.report import write_report
from irpo_run.summary import write_summary
from irpo_train.cli import main as train_command


@click.group(cls=Group)
def main() -> None:
    """Iterative Reasoning Preference Optimization, end to end.

    \b
    Examples:
      irpo run                          # the embedded demo: two iterations on 2 CPU cores
      irpo data build --card gsm8k --iter 1
      irpo train --card gsm8k --iter 1 && irpo eval --card gsm8k
    """


main.add_command(data_group, "data")
main.add_command(train_command, "train")
main.add_command(eval_command, "eval")


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
    help="Push each iteration's pairs (config iter_t) and the leaderboard to this dataset repo; iterations it "
    "does not have yet (built earlier, or a failed push) are pushed too.",
)
@click.option(
    "--push-models-to-hub",
    "push_models_to_hub",
    metavar="ORG/NAME",
    default=None,
    help="Push each M_t, after its evaluation, to this model repo: branch iter_t, and main the latest; models it "
    "does not have yet, or has without their test results, are pushed too.",
)
@private_option
@click.option(
    "--ablations",
    is_flag=True,
    help="Also train iteration 1's samples with every other objective (dpo, dpo_norm_nll, sft_winners, sft_gold), "
    "on twice the pairs (dpo_nll_2x, sft_winners_2x) and from the SFT model (dpo_from_sft, dpo_nll_from_sft), and "
    "put them on the leaderboard; for some of them set the card key instead: ablations=[dpo,sft_winners].",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Delete the run folder runs/NAME first (its set-aside copies, runs/NAME.stale-N, stay) and start over.",
)
@ray_option
@dry_run_option
@quiet_option
@overrides_argument
def run(
    card,
    runs_dir,
    iterations,
    push_to_hub,
    push_models_to_hub,
    private,
    ablations,
    fresh,
    ray_address,
    dry_run,
    quiet,
    overrides,
):
    """Run the loop: for t = 1..T build iteration t's pairs from M_{t-1}, train M_t, evaluate.

    \b
    Examples:
      irpo run                                        # demo card, 2 iterations, runs/demo
      irpo run --card gsm8k --iterations 4 --push-to-hub ORG/irpo-gsm8k
      irpo run train.learning_rate=5e-6               # retrains M_1 on, reuses the pairs (the old M_1 is kept)
      irpo run --fresh                                # delete runs/demo and start over
      irpo run --ablations                            # + the paper's baselines from iteration 1's samples
      irpo run ablations=[dpo,sft_winners] --iterations 1
      irpo run --card gsm8k --ray-address auto resources.ray_engines=8   # sample on a Ray cluster

    The run folder is the only state: a finished stage whose manifest matches the card is
    skipped, a killed run resumes where it stopped, and a changed card key re-runs the stage
    it affects and everything after it (the log says which and why). What a change would
    replace is set aside as NAME.stale-N, never deleted; only --fresh deletes. One command
    at a time per run folder. The summary is printed at the end and written to runs/NAME/README.md.
    """
    setup_logging(quiet)

    resolved = resolve_card(card, overrides, ray_address=ray_address)
    if ablations:
        resolved = dataclasses.replace(resolved, ablations=_all_ablations(resolved))
    iterations = iterations or resolved.iterations
    run_folder = RunFolder.for_card(resolved, runs_dir)
    if dry_run:
        extra = f", then the ablations {', '.join(resolved.ablations)}" if resolved.ablations else ""
        fresh_first = f"delete {run_folder.root}, then " if fresh and run_folder.root.exists() else ""
        would = f"{fresh_first}run iterations 1..{iterations} (build, train, eval) in {run_folder.root}{extra}"
        would += f"; push each M_t to model repo {push_models_to_hub}" if push_models_to_hub else ""
        return show_dry_run(resolved, would)
    # the repo ids, and access when online: before anything is touched
    pushes = Pushes.start(push_to_hub, private, push_models_to_hub)
    start_reaper()  # the stages' processes and the engines they start die with irpo run
    with run_lock(run_folder.root):
        if fresh:
            _delete_run(run_folder.root)
        times = run_loop(resolved, iterations, runs_dir, progress=not quiet, pushes=pushes)
        click.echo(write_summary(run_folder, iterations, times.seconds))
    click.echo(f"The run on one page: {refresh_report(run_folder)}  (open it in a browser; `irpo report` rewrites it)")


@main.command()
@click.argument("run_folder", metavar="RUN", type=click.Path(path_type=Path), default=Path("runs/demo"))
@click.option("--open", "open_it", is_flag=True, help="Open it in the default browser afterwards.")
def report(run_folder: Path, open_it: bool) -> None:
    """Write RUN/report.html: the run on one page (accuracy against the paper, pairs, drops, checkpoints,
    log-prob curves, what the model now answers). Any run folder: finished, partial, or made by an older irpo.

    \b
    Examples:
      irpo report                   # runs/demo
      irpo report runs/gsm8k --open
    """
    setup_logging(quiet=False)
    run = RunFolder(run_folder)
    if not run.card_file.is_file():
        raise RunFolderError(f"{run_folder} is not a run folder (no card.yaml); give the folder `irpo run` made")
    path = write_report(run)
    click.echo(f"report: {path} ({path.stat().st_size / 1e3:.0f} kB)")
    if open_it:
        click.launch(str(path))


def _delete_run(root) -> None:
    """--fresh: the one place irpo deletes a run folder, because the user asked; it says what goes."""

    if root.is_symlink():  # the link goes, never what it points at
        click.echo(f"--fresh: removing the link {root} (its target {root.resolve()} is kept)", err=True)
        root.unlink()
        return
    if not root.exists():
        return
    parts = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    click.echo(f"--fresh: deleting {root} ({', '.join(parts) or 'empty'})", err=True)
    shutil.rmtree(root) if root.is_dir() else root.unlink()


def _all_ablations(card: Card) -> list[str]:
    """--ablations: every objective but the card's own, and the two twice-the-pairs baselines
    (sft_gold only where the task has gold solutions)."""

    chosen = [name for name in ABLATIONS if name != card.train.objective]
    if not task_from_config(card.task).has_solutions:
        for name in [n for n in chosen if ABLATIONS[n].objective.needs_gold]:
            click.echo(f"--ablations: skipping {name}, task {card.task.name} has no gold solutions", err=True)
            chosen.remove(name)
    return chosen
