"""Publish one iteration's pairs: DatasetDict on disk, dataset card, manifest, Hub push.

Writes into `runs/NAME/iter_T/`:
- `pairs/`: a `datasets.DatasetDict` with one split, `train` (save_to_disk, atomic);
- `README.md`: the dataset card (Hub YAML header, counts, drop reasons, lineage);
- `manifest.json`: hashes and counts, written last.

`push_iteration` uploads the pairs as config `iter_T` of one dataset repo per run, adds the
card and manifest under `iter_T/`, and tags the push `iter_T-<fingerprint>`: the tag is how a later
run knows the iteration is there (`pushed_tags`), so pushes that failed or were never asked for
catch up. The token comes from `HF_TOKEN` or `hf auth login`, is passed to the Hub client and
nowhere else.

What the user did not choose is never published: a repo's visibility is the Hub's default for the
user or org unless `private` is True or False (the commands' --private/--public), and every text
file pushed goes through `public_text`, which replaces local absolute paths (they name users and
machines) by paths relative to the run folder, or by their last two parts.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import re
import socket
import string
from importlib import resources
from pathlib import Path

import polars as pl

from irpo_data.errors import IrpoError
from irpo_data.pairs import DROP_REASONS
from irpo_data.reading import load_dataset_dir
from irpo_data.runs import atomic_dir, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


class PublishError(IrpoError, RuntimeError):
    """The pairs are saved locally but could not be published."""


def fingerprint(pairs: pl.DataFrame) -> str:
    """sha256 of the pair table's content. datasets' own `_fingerprint` changes across a
    save_to_disk/load_from_disk round trip, so the manifest hashes the rows itself."""
    return hashlib.sha256(pairs.write_csv().encode()).hexdigest()


def save_pairs(pairs: pl.DataFrame, iteration: int, path: Path):
    from datasets import Dataset, DatasetDict

    table = pairs.with_columns(pl.lit(iteration, dtype=pl.Int32).alias("iteration"))
    # From the Arrow table directly: Dataset.from_polars fails on a table with no rows, and an
    # iteration with no pairs is a result to save (and report), not a crash.
    dataset = DatasetDict({"train": Dataset(table.to_arrow())})
    with atomic_dir(path) as tmp:
        # One shard at least: datasets writes no shard for an empty split and then cannot load it.
        dataset.save_to_disk(str(tmp), num_shards={"train": 1} if table.height == 0 else None)
    return dataset


def dataset_card(**fields) -> str:
    template = (resources.files("irpo_cards") / "dataset_card.md").read_text()
    stats = fields.pop("stats")
    rows = [f"| generation {r.replace('_', ' ')} | {stats[f'dropped_{r}']} |" for r in DROP_REASONS]
    rows += [
        f"| question: prompt longer than the engine's context (not sampled) | {stats.get('questions_prompt_too_long', 0)} |",
        f"| question: no usable generation left | {stats['questions_no_usable_generation']} |",
        f"| question: no correct generation (and no gold winner) | {stats['questions_no_correct']} |",
        f"| question: no wrong generation | {stats['questions_no_wrong']} |",
        f"| pair: over pairs.max_pairs (a random subset kept) | {stats.get('dropped_over_max_pairs', 0)} |",
    ]
    values = {**stats, **fields, "drop_table": "\n".join(rows), "sample_accuracy": f"{stats['sample_accuracy']:.1%}"}
    return string.Template(template).substitute(values)


def write_card_and_manifest(iter_dir: Path, card_text: str, manifest: dict) -> None:
    write_text_atomic(iter_dir / "README.md", card_text)
    write_json_atomic(iter_dir / "manifest.json", manifest)  # last: its presence means "complete"


def check_repo_id(repo_id: str) -> None:
    """Refuse, before any work, a repo id the Hub would refuse after hours of it."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    problem = None if repo_id.count("/") == 1 else "it must be ORG/NAME (your user name or an org, a slash, a name)"
    if problem is None:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as exc:
            problem = str(exc).splitlines()[0][:200]
    if problem:
        raise PublishError(f"--push-to-hub {repo_id[:200]!r} is not a Hub repo id: {problem}")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def check_access(repo_id: str, token: str | None = None) -> None:
    """Online: a token that the Hub accepts, and a repo it can write (or create). Raises PublishError."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    api = HfApi(token=resolve_token(token))
    try:
        api.whoami()
        api.repo_info(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:
        return  # the first push creates it
    except HfHubHTTPError as exc:
        raise PublishError(
            f"the Hub refused access to {repo_id} ({str(exc).splitlines()[0][:200]}); check the token"
        ) from None
    except Exception as exc:  # noqa: BLE001  (network: the pushes will catch up on a later run)
        raise PublishError(
            f"could not reach the Hub to check {repo_id} ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


def pushed_tags(repo_id: str, token: str | None = None) -> set[str]:
    """The tags of dataset repo `repo_id` (none if it does not exist yet)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = HfApi(token=resolve_token(token)).list_repo_refs(repo_id, repo_type="dataset")
    except RepositoryNotFoundError:
        return set()
    except Exception as exc:  # noqa: BLE001
        raise PublishError(f"could not list the tags of {repo_id} ({type(exc).__name__}: {str(exc)[:200]})") from None
    return {tag.name for tag in refs.tags}


def iteration_tag(iteration: int, fingerprint_hex: str) -> str:
    return f"iter_{iteration}-{fingerprint_hex[:12]}"


# An absolute local path: "/" or "~/" then path parts, not inside a URL ("https://host/...").
_LOCAL_PATH = re.compile(r"(?<![\w:/.~-])(?:~/|/)(?:[\w.@+=-]+/)*[\w.@+=-]+/?")


def public_text(text: str, run_root: Path | None = None) -> str:
    """`text` with every local absolute path replaced: inside the run folder by its path relative to the
    run folder, elsewhere by its last two parts (without the user's or the machine's name)."""
    root = str(run_root.resolve()) if run_root is not None else None
    private_names = {getpass.getuser(), socket.gethostname(), Path.home().name} - {""}

    def replace(match: re.Match) -> str:
        path = match.group(0)
        if root and (path == root or path.startswith(root + "/")):
            return path[len(root) + 1 :] or "."
        parts = [p for p in path.strip("/").split("/") if p and p != "~" and p not in private_names]
        return "/".join(parts[-2:]) or "."

    return _LOCAL_PATH.sub(replace, text)


def resolve_token(token: str | None = None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise PublishError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again")
    return token


def _require_online(repo_id: str, what_is_kept: str) -> None:
    if offline():
        raise PublishError(f"HF_HUB_OFFLINE is set, so {repo_id} was not pushed; {what_is_kept}")


TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".yaml", ".txt")


def _upload(path: Path, run_root: Path | None) -> bytes | str:
    """What is uploaded for a local file: text files through public_text, others as they are."""
    if path.suffix in TEXT_SUFFIXES:
        return public_text(path.read_text(encoding="utf-8"), run_root).encode()
    return str(path)


def push_files(
    repo_id: str,
    files: dict[str, Path],
    message: str,
    retry: str,
    token: str | None = None,
    private: bool | None = None,
    run_root: Path | None = None,
) -> None:
    """Upload local `files` ({path in repo: local path}) to dataset repo `repo_id` in one commit.

    `retry` is the command that pushes again; it ends every error message, since the local
    files are complete whether or not the push worked. `private`: None leaves a new repo's
    visibility to the Hub's default. Text files go through public_text (`run_root`: the run folder).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    _require_online(repo_id, f"the local files are complete; push later with `{retry}`")
    token = resolve_token(token)
    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
        operations = [CommitOperationAdd(name, _upload(path, run_root)) for name, path in sorted(files.items())]
        api.create_commit(repo_id, repo_type="dataset", operations=operations, commit_message=message)
    except Exception as exc:  # network, auth: the local files stay complete either way
        raise PublishError(
            f"push to {repo_id} failed ({type(exc).__name__}: {exc}); the local files are complete; retry "
            f"with `{retry}`"
        ) from None
    log.info("pushed %d files to https://huggingface.co/datasets/%s", len(files), repo_id)


def push_iteration(
    iter_dir: Path,
    repo_id: str,
    iteration: int,
    fingerprint_hex: str,
    private: bool | None = None,
    token: str | None = None,
) -> str:
    """Push `iter_dir` as config `iter_T` of `repo_id`; return the tag it created.

    `private`: True or False sets a new repo's visibility; None (the default) leaves it to the Hub's
    default for the user or org."""
    from huggingface_hub import CommitOperationAdd, HfApi

    _require_online(
        repo_id,
        f"the dataset in {iter_dir} is complete. Push it later with `irpo data push --iter {iteration} "
        f"--push-to-hub {repo_id}`",
    )
    token = resolve_token(token)
    config = f"iter_{iteration}"
    tag = iteration_tag(iteration, fingerprint_hex)
    run_root = iter_dir.parent
    card_text = public_text((iter_dir / "README.md").read_text(encoding="utf-8"), run_root)
    manifest_text = public_text((iter_dir / "manifest.json").read_text(encoding="utf-8"), run_root)
    dataset = load_dataset_dir(iter_dir / "pairs")  # an unreadable dataset is no failed push: said as itself
    try:
        dataset.push_to_hub(
            repo_id,
            config_name=config,
            private=private,
            token=token,
            commit_message=f"irpo: pairs of iteration {iteration} ({fingerprint_hex[:12]})",
        )
        api = HfApi(token=token)
        api.create_commit(
            repo_id,
            repo_type="dataset",
            operations=[
                # The local card cannot know the repo; the pushed copy names it in its example.
                CommitOperationAdd(f"{config}/README.md", card_text.replace('"REPO"', f'"{repo_id}"').encode()),
                CommitOperationAdd(f"{config}/manifest.json", manifest_text.encode()),
            ],
            commit_message=f"irpo: dataset card and manifest of iteration {iteration}",
        )
        api.create_tag(repo_id, tag=tag, repo_type="dataset", exist_ok=True, tag_message=f"irpo {config}")
    except PublishError:
        raise
    except Exception as exc:  # network, auth, offline: the local dataset stays complete either way
        raise PublishError(
            f"push of {iter_dir} to {repo_id} failed ({type(exc).__name__}: {exc}); the local dataset is "
            f"complete; retry with `irpo data push --iter {iteration} --push-to-hub {repo_id}`"
        ) from None
    log.info("pushed %s as config %s of https://huggingface.co/datasets/%s (tag %s)", iter_dir, config, repo_id, tag)
    return tag
