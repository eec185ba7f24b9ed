"""`irpo-data`: build and publish Iterative RPO preference-pair datasets."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from irpo_data.card import BUNDLED_CARDS, CardError, load_card
from irpo_data.models import ModelError
from irpo_data.publish import PublishError
from irpo_data.sampling import SamplingError
from irpo_data.tasks import TaskError, task_names

USER_ERRORS = (CardError, TaskError, ModelError, SamplingError, PublishError)


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _card(card: str, overrides: tuple[str, ...], data_dir: str | None):
    if data_dir is not None:
        overrides = (*overrides, f"task.data_dir={data_dir}")
    return load_card(card, overrides)


card_option = click.option(
    "--card",
    default="demo",
    show_default=True,
    help=f"Recipe card: a YAML path or a bundled card ({', '.join(BUNDLED_CARDS)}).",
)
iter_option = click.option(
    "--iter",
    "iteration",
    type=int,
    default=1,
    show_default=True,
    help="Iteration T to build (1 = sample from the base model).",
)
runs_option = click.option(
    "--runs-dir",
    default="runs",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder holding run folders (runs/NAME).",
)
hub_option = click.option(
    "--push-to-hub",
    "push_to_hub",
    metavar="ORG/NAME",
    default=None,
    help="Dataset repo to push to, as config iter_T (token: HF_TOKEN or `hf auth login`).",
)
private_option = click.option("--private", is_flag=True, help="Create the Hub repo as private.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Build Iterative RPO preference pairs: sample, grade, pair, publish.

    \b
    Example (the embedded demo, a few minutes on 2 CPU cores):
      irpo-data build
    """


@main.command()
@card_option
@iter_option
@runs_option
@click.option(
    "--model", default=None, help="Sample from this model instead of the card's base (T=1) or runs/NAME/models/M_{T-1}."
)
@click.option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Read the task's {split}.jsonl/.parquet from here (same as task.data_dir=...).",
)
@hub_option
@private_option
@click.option("--dry-run", is_flag=True, help="Print the resolved card and exit.")
@click.option("--quiet", is_flag=True, help="Only warnings and the result on the terminal.")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def build(card, iteration, runs_dir, model, data_dir, push_to_hub, private, dry_run, quiet, overrides):
    """Build runs/NAME/iter_T/: samples, pairs, dataset card and manifest.

    \b
    Examples:
      irpo-data build                                   # demo card, iteration 1
      irpo-data build --card gsm8k --iter 2 --push-to-hub me/irpo-gsm8k
      irpo-data build --card cards/gsm8k.yaml --data-dir ../shared/data/gsm8k \\
          sampling.num_samples=8 task.max_questions=200

    Overrides are dotted card keys (sampling.num_samples=8). A killed build resumes from its
    last finished shard when run again with the same arguments.
    """
    setup_logging(quiet)
    try:
        resolved = _card(card, overrides, data_dir)
        if dry_run:
            click.echo(resolved.to_yaml(), nl=False)
            return
        from irpo_data.build import build_iteration

        result = build_iteration(resolved, iteration, runs_dir, model=model, progress=not quiet)
        counts = result.manifest["counts"]
        click.echo(
            f"{result.iter_dir}: {counts['pairs']} pairs from {counts['questions_paired']} of "
            f"{counts['questions']} questions (sampling accuracy {counts['train_accuracy']:.1%}); "
            f"fingerprint {result.manifest['dataset_fingerprint'][:16]}"
        )
        if push_to_hub:
            _push(result.iter_dir, push_to_hub, iteration, result.manifest, private)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted: finished sample shards are kept; run the same command again to resume", err=True)
        sys.exit(130)


@main.command()
@card_option
@iter_option
@runs_option
@hub_option
@private_option
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
def push(card, iteration, runs_dir, push_to_hub, private, overrides):
    """Push an already built iteration to the Hugging Face Hub.

    \b
    Example:
      irpo-data push --iter 1 --push-to-hub me/irpo-demo
    """
    setup_logging(False)
    try:
        if not push_to_hub:
            raise click.UsageError("--push-to-hub ORG/NAME is required")
        from irpo_data.runs import RunFolder

        run = RunFolder.for_card(load_card(card, overrides), runs_dir)
        manifest_path = run.manifest(iteration)
        if not manifest_path.is_file():
            raise click.ClickException(
                f"{run.iteration(iteration)} is not built; run `irpo-data build --iter {iteration}` first"
            )
        _push(run.iteration(iteration), push_to_hub, iteration, json.loads(manifest_path.read_text()), private)
    except USER_ERRORS as exc:
        raise click.ClickException(str(exc)) from None


def _push(iter_dir: Path, repo_id: str, iteration: int, manifest: dict, private: bool) -> None:
    from irpo_data.publish import push_iteration

    tag = push_iteration(iter_dir, repo_id, iteration, manifest["dataset_fingerprint"], private=private)
    click.echo(f"pushed to https://huggingface.co/datasets/{repo_id} as config iter_{iteration}, tag {tag}")


@main.command("tasks")
def list_tasks():
    """List the registered tasks.

    \b
    Example:
      irpo-data tasks
    """
    from irpo_data.tasks import get_task

    for name in task_names():
        task = get_task(name)
        click.echo(f"{name:15} {task.hub_id or '(built in)':25} answers: {task.answer_kind}")
