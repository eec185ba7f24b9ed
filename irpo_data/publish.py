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
import json
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
from irpo_data.reading import load_dataset_dir, read_text
from irpo_data.runs import atomic_dir, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


class PublishError(IrpoError, RuntimeError):
    """The pairs are saved locally but could not be published."""


def fingerprint(pairs: pl.DataFrame) -> str:
    """sha256 of the pair table's content. datasets' own `_fingerprint` changes across a
    save_to_disk/load_from_disk round trip, so the manifest hashes the rows itself.

    The scalar columns as CSV (which is all a table held before the token-id columns, so earlier
    fingerprints stay valid), then each list column (CSV has no lists): its name, each row's length
    and the ids, as 64-bit integers."""
    lists = [name for name, dtype in pairs.schema.items() if isinstance(dtype, pl.List)]
    digest = hashlib.sha256(pairs.drop(lists).write_csv().encode())
    for name in lists:
        column = pairs[name]
        digest.update(name.encode())
        digest.update(column.list.len().fill_null(-1).to_numpy().astype("<i8").tobytes())
        digest.update(column.explode().drop_nulls().to_numpy().astype("<i8").tobytes())
    return digest.hexdigest()


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


def check_access(repo_id: str, token: str | None = None) -> bool:
    """Whether the Hub answered: False when it cannot be reached (the pushes catch up on a later run).
    Raises PublishError when it answers no: a token it refuses, or an owner the token's account is not
    (nor a member of)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=resolve_token(token))
    try:
        account = api.whoami()
    except HfHubHTTPError as exc:
        raise PublishError(
            f"the Hub refused access to {repo_id} ({str(exc).splitlines()[0][:200]}); check the token"
        ) from None
    except Exception as exc:  # noqa: BLE001  (no network, a proxy, DNS: not a refusal)
        log.warning("could not reach the Hub to check %s (%s: %s)", repo_id, type(exc).__name__, str(exc)[:200])
        return False
    owner = repo_id.split("/")[0]
    names = {account.get("name")} | {org.get("name") for org in account.get("orgs") or [] if isinstance(org, dict)}
    if owner not in names:
        raise PublishError(
            f"the token's account {account.get('name')!r} is not {owner!r} nor a member of it, so it cannot write "
            f"{repo_id}; use a token of that account or org, or another --push-to-hub"
        )
    return True


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


# A local absolute path inside prose: "/", "~/" or "file:///", then two parts or more ("/4" in "3 /4" is
# no path), outside a URL ("https://host/a/b" is preceded by ":" or "/").
_LOCAL_PATH = re.compile(r"(?:file://|(?<![\w:/.~-]))(?:~/|/)(?:[\w.+=-]+/)+[\w.+=-]+/?")


def public_path(path: str, run_root: Path | None = None) -> str:
    """One local path as it may be published: relative to the run folder when inside it, else its last
    two parts (its last one when it has three or fewer, as in /home/USER/x), without this user's, this
    machine's or any home folder's name."""
    path = path.removeprefix("file://")
    root = str(run_root.resolve()) if run_root is not None else None
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) + 1 :] or "."
    private_names = {getpass.getuser(), socket.gethostname(), Path.home().name} - {""}
    parts = [p for p in path.strip("/").split("/") if p and p != "~"]
    homes = {i + 1 for i, p in enumerate(parts) if p in ("home", "Users", "users")}  # /home/NAME, /Users/NAME
    kept = [p for i, p in enumerate(parts) if i not in homes and p not in private_names]
    return "/".join(kept[-2:] if len(parts) > 3 else kept[-1:]) or "."


def public_text(text: str, run_root: Path | None = None) -> str:
    """`text` with every local absolute path replaced by public_path. JSON is rewritten value by value
    (a value that is a whole path may hold spaces, commas or any letter); other text by a pattern."""
    try:
        data = json.loads(text)
    except ValueError:
        return _LOCAL_PATH.sub(lambda match: public_path(match.group(0), run_root), text)
    return json.dumps(_public_values(data, run_root), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _public_values(value, run_root: Path | None):
    if isinstance(value, dict):
        return {key: _public_values(item, run_root) for key, item in value.items()}
    if isinstance(value, list):
        return [_public_values(item, run_root) for item in value]
    if isinstance(value, str):
        whole = value.removeprefix("file://")
        if (whole.startswith(("/", "~/")) and "\n" not in whole) or whole.startswith(str(Path.home())):
            return public_path(whole, run_root)
        return _LOCAL_PATH.sub(lambda match: public_path(match.group(0), run_root), value)
    return value


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
    card_text = public_text(read_text(iter_dir / "README.md"), run_root)
    manifest_text = public_text(read_text(iter_dir / "manifest.json"), run_root)
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
