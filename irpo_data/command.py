"""What every irpo command shares: its options, its logging, and the one error boundary.

`irpo` is one click group (irpo/cli.py) of `data build|push|tasks`, `train`, `eval` and `run`;
`irpo-data`, `irpo-train` and `irpo-eval` are the same commands under their old names. Each
is a `Command` (or `Group`) from here, whose `invoke` is the boundary: an `IrpoError` becomes one
line ("Error: <what is wrong and the fix>", exit 1), Ctrl-C says that finished work is kept
(exit 130), a full disk says so; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

import click

from irpo_data.card import BUNDLED_CARDS, Card, load_card
from irpo_data.errors import IrpoError

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _at_the_boundary(invoke):
    try:
        return invoke()
    except IrpoError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo(
            "interrupted: finished work is kept in the run folder; run the same command again to go on", err=True
        )
        sys.exit(130)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise click.ClickException(
            f"the disk is full ({exc.filename or 'while writing'}): free some space and run the same command again; "
            "finished stages are kept and a half-written file is never taken for a finished one"
        ) from None


class Command(click.Command):
    """A click command whose errors cross the one boundary above."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("context_settings", CONTEXT)
        super().__init__(*args, **kwargs)

    def invoke(self, ctx):
        return _at_the_boundary(lambda: super(Command, self).invoke(ctx))


class Group(click.Group):
    """A click group of `Command`s (and `Group`s), behind the same boundary."""

    command_class = Command

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("context_settings", CONTEXT)
        super().__init__(*args, **kwargs)

    def invoke(self, ctx):
        return _at_the_boundary(lambda: super(Group, self).invoke(ctx))


Group.group_class = Group


def setup_logging(quiet: bool) -> None:
    # Under torchrun / accelerate launch every process runs the command: the main one tells the story.
    quiet = quiet or int(os.environ.get("RANK", "0")) > 0
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def resolve_card(
    card: str, overrides: tuple[str, ...] | list[str], data_dir: str | None = None, ray_address: str | None = None
) -> Card:
    """The card named by --card with its KEY=VALUE overrides, and the shorthands for two of them:
    --data-dir (task.data_dir) and --ray-address (resources.sampling_backend=ray at that address)."""
    if data_dir is not None:
        overrides = (*overrides, f"task.data_dir={data_dir}")
    if ray_address is not None:
        overrides = (*overrides, "resources.sampling_backend=ray", f"resources.ray_address={ray_address}")
    return load_card(card, overrides)


def show_dry_run(card: Card, would: str) -> None:
    """--dry-run: the resolved card, then one line on what the command would do."""
    click.echo(card.to_yaml(), nl=False)
    click.echo(f"# would {would}")


card_option = click.option(
    "--card",
    default="demo",
    show_default=True,
    help=f"Recipe card: a YAML path or a bundled card ({', '.join(BUNDLED_CARDS)}).",
)
iter_option = click.option(
    "--iter",
    "iteration",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Iteration T (1 = sample from the base model).",
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
    help="Dataset repo to push to (token: HF_TOKEN or `hf auth login`).",
)
ray_option = click.option(
    "--ray-address",
    metavar="ADDRESS",
    default=None,
    help="Sample on the Ray cluster at ADDRESS, e.g. ray://head:10001 (same as resources.sampling_backend=ray "
    "resources.ray_address=ADDRESS; with the backend set and no address, RAY_ADDRESS or a local cluster).",
)
private_option = click.option("--private", is_flag=True, help="Create the Hub repo as private.")
dry_run_option = click.option("--dry-run", is_flag=True, help="Print the resolved card and what would run, then exit.")
quiet_option = click.option("--quiet", is_flag=True, help="Only warnings and the result on the terminal.")
overrides_argument = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
