"""The Hugging Face Hub: what is pushed, as what, and how a run finds what is already there.

    check_repo_id("me/irpo-gsm8k")           # the form, before any work
    check_access("me/irpo-gsm8k")            # online: the token works and may write the owner's repos
    push_files("me/irpo-gsm8k", {"leaderboard.md": path}, "irpo: leaderboard", retry="irpo eval ...")
    pushed_tags("me/irpo-gsm8k")             # {"iter_1-3f2a...", ...}: what the catch-up skips
    push_files("me/irpo-gsm8k-models", files, "irpo: M_1", retry=..., repo_type="model", revision="iter_1",
               replace=True)                 # branch iter_1 holds exactly `files` (irpo.model_repo)
    pushed_branches("me/irpo-gsm8k-models")  # {"main", "iter_1", ...}
    read_repo_text("me/irpo-gsm8k-models", "README.md", revision="iter_1")   # None where it is not

What the user did not choose is never published: a new repo's visibility is the Hub's default for the
user or org unless `private` is True or False (the commands' --private/--public), and every text file
pushed goes through `public_text`, which replaces local absolute paths (they name users and machines)
by paths relative to the run folder, or by their last parts. The token comes from `HF_TOKEN` or `hf
auth login`, is passed to the Hub client and nowhere else. The build's dataset push (its DatasetDict,
card and tag) is irpo_data.publish.push_iteration; a run's models, one branch per iteration, are
irpo.model_repo's.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import socket
import tempfile
from pathlib import Path

from irpo.errors import IrpoError

log = logging.getLogger(__name__)


class HubError(IrpoError, RuntimeError):
    """The Hub refused, could not be reached, or has no token to push with; local files are complete."""


def check_repo_id(repo_id: str, option: str = "--push-to-hub") -> None:
    """Refuse, before any work, a repo id the Hub would refuse after hours of it (`option`: where it was given)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    problem = None if repo_id.count("/") == 1 else "it must be ORG/NAME (your user name or an org, a slash, a name)"
    if problem is None:
        try:
            validate_repo_id(repo_id)
        except HFValidationError as exc:
            problem = str(exc).splitlines()[0][:200]
    if problem:
        raise HubError(f"{option} {repo_id[:200]!r} is not a Hub repo id: {problem}")


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
        raise HubError(
            f"the Hub refused access to {repo_id} ({str(exc).splitlines()[0][:200]}); check the token"
        ) from None
    except Exception as exc:  # noqa: BLE001  (no network, a proxy, DNS: not a refusal)
        log.warning("could not reach the Hub to check %s (%s: %s)", repo_id, type(exc).__name__, str(exc)[:200])
        return False
    owner = repo_id.split("/")[0]
    names = {account.get("name")} | {org.get("name") for org in account.get("orgs") or [] if isinstance(org, dict)}
    if owner not in names:
        raise HubError(
            f"the token's account {account.get('name')!r} is not {owner!r} nor a member of it, so it cannot write "
            f"{repo_id}; use a token of that account or org, or another --push-to-hub"
        )
    return True


def pushed_tags(repo_id: str, token: str | None = None) -> set[str]:
    """The tags of dataset repo `repo_id` (none if it does not exist yet)."""
    refs = _refs(repo_id, "dataset", token)
    return {tag.name for tag in refs.tags} if refs else set()


def pushed_branches(repo_id: str, token: str | None = None) -> set[str]:
    """The branches of model repo `repo_id` (none if it does not exist yet)."""
    refs = _refs(repo_id, "model", token)
    return {branch.name for branch in refs.branches} if refs else set()


def _refs(repo_id: str, repo_type: str, token: str | None):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return HfApi(token=resolve_token(token)).list_repo_refs(repo_id, repo_type=repo_type)
    except RepositoryNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001
        raise HubError(f"could not list the refs of {repo_id} ({type(exc).__name__}: {str(exc)[:200]})") from None


def read_repo_text(repo_id: str, path: str, revision: str, repo_type: str = "model", token: str | None = None):
    """The text of `path` at `revision` of `repo_id`, or None where the repo, the revision or the file is not."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    # A folder of its own, not the shared cache: a card read to compare is thrown away.
    with tempfile.TemporaryDirectory(prefix="irpo-hub-") as cache:
        try:
            local = hf_hub_download(
                repo_id, path, revision=revision, repo_type=repo_type, cache_dir=cache, token=resolve_token(token)
            )
        except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
            return None
        except Exception as exc:  # noqa: BLE001
            raise HubError(
                f"could not read {path} at {revision} of {repo_id} ({type(exc).__name__}: {str(exc)[:200]})"
            ) from None
        return Path(local).read_text(encoding="utf-8")


def repo_files(repo_id: str, revision: str, repo_type: str = "model", token: str | None = None) -> list[str]:
    """The paths at `revision` of `repo_id`."""
    from huggingface_hub import HfApi

    try:
        return HfApi(token=resolve_token(token)).list_repo_files(repo_id, repo_type=repo_type, revision=revision)
    except Exception as exc:  # noqa: BLE001
        raise HubError(f"could not list {revision} of {repo_id} ({type(exc).__name__}: {str(exc)[:200]})") from None


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
        raise HubError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again")
    return token


def require_online(repo_id: str, what_is_kept: str) -> None:
    if offline():
        raise HubError(f"HF_HUB_OFFLINE is set, so {repo_id} was not pushed; {what_is_kept}")


TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".yaml", ".txt")
# A tokenizer's vocabulary and merges are the model's data, not text irpo wrote: a token such as "/usr/x"
# would be taken for a path and rewritten, which breaks the tokenizer; they name no local path.
VERBATIM = frozenset(
    {"tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "special_tokens_map.json"}
)


def _upload(path: Path | bytes, run_root: Path | None) -> bytes | str:
    """What is uploaded for a local file: text files through public_text, others as they are; bytes
    (text the caller made public) as they are."""
    if isinstance(path, bytes):
        return path
    if path.suffix in TEXT_SUFFIXES and path.name not in VERBATIM:
        return public_text(path.read_text(encoding="utf-8"), run_root).encode()
    return str(path)


def repo_url(repo_id: str, repo_type: str = "dataset", revision: str | None = None) -> str:
    url = f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
    return f"{url}/tree/{revision}" if revision else url


def push_files(
    repo_id: str,
    files: dict[str, Path | bytes],
    message: str,
    retry: str,
    token: str | None = None,
    private: bool | None = None,
    run_root: Path | None = None,
    *,
    repo_type: str = "dataset",
    revision: str | None = None,
    replace: bool = False,
) -> str:
    """Upload `files` ({path in repo: local path, or bytes}) to `repo_id` in one commit; return its id.

    `retry` is the command that pushes again; it ends every error message, since the local
    files are complete whether or not the push worked. `private`: None leaves a new repo's
    visibility to the Hub's default. Text files go through public_text (`run_root`: the run folder).
    `revision`: the branch to commit to (made from main when it does not exist yet); None: main.
    `replace`: also delete what the branch holds beyond `files`, so that it holds exactly them.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    require_online(repo_id, f"the local files are complete; push later with `{retry}`")
    token = resolve_token(token)
    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type=repo_type, exist_ok=True, private=private)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        operations = [CommitOperationAdd(name, _upload(path, run_root)) for name, path in sorted(files.items())]
        if replace:
            remote = api.list_repo_files(repo_id, repo_type=repo_type, revision=revision)
            kept = set(files) | {".gitattributes"}  # the Hub's own file, which says what LFS stores
            operations += [CommitOperationDelete(name) for name in sorted(set(remote) - kept)]
        commit = api.create_commit(
            repo_id, repo_type=repo_type, operations=operations, commit_message=message, revision=revision
        )
    except Exception as exc:  # network, auth: the local files stay complete either way
        raise HubError(
            f"push to {repo_id} failed ({type(exc).__name__}: {exc}); the local files are complete; retry "
            f"with `{retry}`"
        ) from None
    log.info("pushed %d files to %s", len(files), repo_url(repo_id, repo_type, revision))
    return commit.oid


def create_branch(repo_id: str, branch: str, start: str, retry: str, token: str | None = None) -> None:
    """Make branch `branch` of model repo `repo_id` at commit `start` (what another branch has just received)."""
    from huggingface_hub import HfApi

    try:
        HfApi(token=resolve_token(token)).create_branch(repo_id, branch=branch, revision=start)
    except Exception as exc:  # noqa: BLE001
        raise HubError(
            f"could not make branch {branch} of {repo_id} ({type(exc).__name__}: {str(exc)[:200]}); retry with "
            f"`{retry}`"
        ) from None
    log.info("branch %s of %s made at %s", branch, repo_url(repo_id, "model"), start[:12])
