"""`irpo data` (alias `irpo-data`): build and publish Iterative RPO preference-pair datasets."""

from __future__ import annotations

from pathlib import Path

import click

from irpo.command import (
    Group,
    card_option,
    dry_run_option,
    hub_option,
    iter_option,
    overrides_argument,
    private_option,
    quiet_option,
    ray_option,
    resolve_card,
    runs_option,
    setup_logging,
    show_dry_run,
    slice_option,
)
from irpo.errors import IrpoError
from irpo.hub import check_repo_id
from irpo.lock import run_lock
from irpo.reaper import start_reaper
from irpo.records import BuildManifest
from irpo.runs import RunFolder
from irpo.tasks import get_task, task_names
from irpo_data.build import build_iteration, build_more_pairs
from irpo_data.build_slice import build_slice
from irpo_data.publish import push_iteration


@click.group(cls=Group)
def main() -> None:
    """Build Iterative RPO preference pairs: sample, grade, pair, publish.

    \b
    Example (the embedded demo, a few minutes on 2 CPU cores):
      irpo data build
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
@click.option(
    "--pairs-factor",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Also pair the iteration's samples at this many times pairs.pairs_per_question (and pairs.max_pairs), "
    "into iter_T/pairs_{N}x/: the paper's twice-the-data baselines (the _2x ablations). No new sampling.",
)
@slice_option
@ray_option
@hub_option
@private_option
@dry_run_option
@quiet_option
@overrides_argument
def build(
    card,
    iteration,
    slice_index,
    runs_dir,
    model,
    data_dir,
    pairs_factor,
    ray_address,
    push_to_hub,
    private,
    dry_run,
    quiet,
    overrides,
):
    """Build runs/NAME/iter_T/: samples, pairs, dataset card and manifest.

    \b
    Examples:
      irpo data build                                   # demo card, iteration 1
      irpo data build --card gsm8k --iter 2 --push-to-hub me/irpo-gsm8k
      irpo data build --card cards/gsm8k.yaml --data-dir ../shared/data/gsm8k \\
          sampling.num_samples=8 task.max_questions=200
      irpo data build --card gsm8k --ray-address ray://head:10001 resources.ray_engines=8
      irpo data build --iter 1 --pairs-factor 2             # + iter_1/pairs_2x for the _2x ablations
      irpo data build --iter 1 --slice 0 sampling.resample_every=4   # a semi-online iteration's first slice

    Overrides are dotted card keys (sampling.num_samples=8). A killed build resumes from its
    last finished shard when run again with the same arguments.
    """
    setup_logging(quiet)
    resolved = resolve_card(card, overrides, data_dir, ray_address)
    if push_to_hub:
        check_repo_id(push_to_hub)  # before the build, not after it
    if dry_run:
        source = model or ("the card's base model" if iteration == 1 else f"models/M_{iteration - 1}")
        return show_dry_run(
            resolved, f"build {RunFolder.for_card(resolved, runs_dir).iteration(iteration)} from {source}"
        )

    if slice_index is not None and (model or pairs_factor > 1):
        raise IrpoError(
            "--slice samples from the weights training reached and pairs at the card's K: leave out --model and "
            "--pairs-factor"
        )
    start_reaper()  # the engine's processes die with this command
    if slice_index is not None:
        with run_lock(RunFolder.for_card(resolved, runs_dir).root):
            record = build_slice(resolved, iteration, slice_index, runs_dir, progress=not quiet)
        counts = record["counts"]
        click.echo(
            f"{RunFolder.for_card(resolved, runs_dir).slice(iteration, slice_index)}: {counts['pairs']} pairs from "
            f"{counts['questions_paired']} of {counts['questions']} questions, sampled from {record['model']}; "
            f"fingerprint {record['pairs_fingerprint'][:16]}"
        )
        run = RunFolder.for_card(resolved, runs_dir)
        if push_to_hub and run.manifest(iteration).is_file():  # the last slice published the iteration
            _push(
                run.iteration(iteration),
                push_to_hub,
                iteration,
                BuildManifest.from_json(run.manifest(iteration)),
                private,
            )
        elif push_to_hub:
            click.echo(f"iteration {iteration} is published after its last slice; --push-to-hub pushes it then")
        return
    with run_lock(RunFolder.for_card(resolved, runs_dir).root):
        result = build_iteration(resolved, iteration, runs_dir, model=model, progress=not quiet)
        if pairs_factor > 1:
            folder, fingerprint = build_more_pairs(resolved, iteration, pairs_factor, runs_dir)
            click.echo(f"{folder}: the samples paired at {pairs_factor}x K; fingerprint {fingerprint[:16]}")
    counts = result.manifest.counts
    click.echo(
        f"{result.iter_dir}: {counts['pairs']} pairs from {counts['questions_paired']} of "
        f"{counts['questions']} questions (sample accuracy {counts['sample_accuracy']:.1%}); "
        f"fingerprint {result.manifest.pairs_fingerprint[:16]}"
    )
    if push_to_hub:
        _push(result.iter_dir, push_to_hub, iteration, result.manifest, private)


@main.command()
@card_option
@iter_option
@runs_option
@hub_option
@private_option
@dry_run_option
@overrides_argument
def push(card, iteration, runs_dir, push_to_hub, private, dry_run, overrides):
    """Push an already built iteration to the Hugging Face Hub.

    \b
    Example:
      irpo data push --iter 1 --push-to-hub me/irpo-demo
    """
    setup_logging(False)
    if not push_to_hub:
        raise click.UsageError("--push-to-hub ORG/NAME is required")

    check_repo_id(push_to_hub)
    resolved = resolve_card(card, overrides)
    run = RunFolder.for_card(resolved, runs_dir)
    if dry_run:
        return show_dry_run(resolved, f"push {run.iteration(iteration)} to {push_to_hub} as config iter_{iteration}")
    if not run.manifest(iteration).is_file():
        raise IrpoError(f"{run.iteration(iteration)} is not built; run `irpo data build --iter {iteration}` first")
    _push(run.iteration(iteration), push_to_hub, iteration, BuildManifest.from_json(run.manifest(iteration)), private)


def _push(iter_dir: Path, repo_id: str, iteration: int, manifest: BuildManifest, private: bool | None) -> None:

    tag = push_iteration(iter_dir, repo_id, iteration, manifest.pairs_fingerprint, private=private)
    click.echo(f"pushed to https://huggingface.co/datasets/{repo_id} as config iter_{iteration}, tag {tag}")


@main.command("tasks")
@card_option
@dry_run_option
@overrides_argument
def list_tasks(card, dry_run, overrides):
    """List the registered tasks (the card's own first: its options checked).

    \b
    Example:
      irpo data tasks
    """

    resolved = resolve_card(card, overrides)
    if dry_run:
        return show_dry_run(resolved, "list the registered tasks")
    for name in task_names():
        task = get_task(name)
        click.echo(f"{name:15} {task.hub_id or '(built in)':27} answers: {task.answer_kind}")
