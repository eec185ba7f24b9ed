"""What every irpo command shares: its options, its logging, and the one error boundary.

`irpo` is one click group (irpo/cli.py) of `data build|push|tasks`, `train`, `eval` and `run`;
`irpo-data`, `irpo-train` and `irpo-eval` are the same commands under their old names. Each
is a `Command` (or `Group`) from here, whose `invoke` is the boundary: an `IrpoError` becomes one
line ("Error: <what is wrong and the fix>", exit 1), Ctrl-C says that finished work is kept
(exit 130), and an OSError a user can fix (a full disk, a quota, permissions, a read-only file system, a
name too long) is one line naming the path; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import sys

import click

from irpo.card import Card
from irpo.card_loader import BUNDLED_CARDS, load_card
from irpo.errors import IrpoError
from irpo.runs import os_error_of

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
        message = os_error_message(os_error_of(exc, exc.filename))
        if message is None:
            raise
        raise click.ClickException(message) from None
    except RuntimeError as exc:  # torch's checkpoint writer says "file write failed", with no errno
        if "file write failed" not in str(exc) and "PytorchStreamWriter failed" not in str(exc):
            raise
        raise click.ClickException(
            f"a checkpoint could not be written ({str(exc).splitlines()[0][:200]}): check the free space, quota and "
            f"permissions of the run folder, then run the same command again; {KEPT}"
        ) from None


KEPT = "finished stages are kept and a half-written file is never taken for a finished one"
# An OSError a user can fix, by errno: (what happened, what to do).
OS_ERRORS = {
    errno.ENOSPC: ("the disk is full", "free some space"),
    errno.EDQUOT: ("the disk quota is used up", "free some space or raise the quota"),
    errno.EACCES: ("permission denied", "make it writable for this user, or choose another --runs-dir"),
    errno.EPERM: ("operation not permitted", "make it writable for this user, or choose another --runs-dir"),
    errno.EROFS: ("the file system is read-only", "choose a --runs-dir on a writable file system"),
    errno.EFBIG: ("the file is larger than this file system allows", "choose a --runs-dir on another file system"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter --runs-dir or run name"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "move that file, or choose another --runs-dir"),
    errno.EISDIR: ("it is a folder, not a file", "move that folder out of the way"),
    errno.EIO: ("input/output error (a failing disk or network file system?)", "check the storage"),
}


def os_error_message(exc: OSError) -> str | None:
    """One line for an OSError a user can fix (a full disk, a quota, permissions...), or None for a bug."""
    if exc.errno not in OS_ERRORS:
        return None
    what, fix = OS_ERRORS[exc.errno]
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{what}; {fix}, then run the same command again ({KEPT})"


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
slice_option = click.option(
    "--slice",
    "slice_index",
    type=click.IntRange(min=0),
    default=None,
    help="Semi-online iterations (sampling.resample_every): slice J only, built then trained in turn "
    "(J = 0, 1, ...; `irpo run` alternates them).",
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
private_option = click.option(
    "--private/--public",
    "private",
    default=None,
    help="Create a new Hub repo as private or as public; without either, the Hub's default for your account or org.",
)
dry_run_option = click.option("--dry-run", is_flag=True, help="Print the resolved card and what would run, then exit.")
quiet_option = click.option("--quiet", is_flag=True, help="Only warnings and the result on the terminal.")
overrides_argument = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
