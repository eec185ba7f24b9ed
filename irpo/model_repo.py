"""A run's models on the Hub: one model repo, a branch per iteration (`iter_1`, `iter_2`, ...), and
`main` holding the latest iteration pushed.

    push_model(run, 2, "me/irpo-gsm8k-models", retry="irpo run ...", datasets_repo="me/irpo-gsm8k")
    # -> ["main", "iter_2"]: the branches it updated; [] where the repo had it all

A branch gets the whole of models/M_t/ (weights, tokenizer, train_manifest.json, checkpoint_choice.json,
curves; not the reference log-probs, a training cache of the pairs) and the model card
(irpo.model_card) as README.md. What a branch holds is read back from its card's `irpo:` block: a branch
with this card is left alone (no upload, no commit); one with these weights and another card (test
results that came after the push, a dataset repo pushed since) gets the card alone; one with other
weights (M_t retrained), or no branch, gets the folder, and loses the files it has beyond it (a branch
whose README.md irpo did not write, or that has none, keeps them: a repo that held files of its own
loses none). Finding
that out costs the repo's refs and one small README.md per branch; hashing the weights reads them once
per process (irpo.models.sha256_file). `main` moves forward only: it is left alone when it holds a
later iteration. Visibility, local paths and the token are irpo.hub's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from irpo.hub import (
    create_branch,
    push_files,
    pushed_branches,
    read_repo_text,
    repo_files,
    require_online,
    resolve_token,
)
from irpo.model_card import model_card, pushed_model
from irpo.models import weights_sha256
from irpo.runs import RunFolder

log = logging.getLogger(__name__)

# Left out of the model repo: the reference's log-probs of the pairs (a training cache, and data
# about the pairs, which the dataset repo has), and files being written (".tmp-").
NOT_PUSHED = ("ref_logps.parquet", "ref_logps.json")


def model_files(folder: Path) -> dict[str, Path]:
    """{path in the repo: local file} for every file of a model folder that is pushed."""
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in NOT_PUSHED and not path.name.startswith(".")
    }


def push_model(
    run: RunFolder,
    t: int,
    repo_id: str,
    *,
    retry: str,
    datasets_repo: str | None = None,
    private: bool | None = None,
    to_main: bool = True,
    token: str | None = None,
) -> list[str]:
    """Bring branch iter_t of model repo `repo_id` (and main, with `to_main`) to models/M_t and its card.

    `datasets_repo`: where the run pushed its pairs (the card links it), None where it did not.
    `retry`: the command that pushes again, named by every error. Returns the branches updated."""
    require_online(repo_id, f"models/M_{t} is complete; push it later with `{retry}`")
    token = resolve_token(token)
    folder = run.model(t)
    weights = weights_sha256(folder)
    card = model_card(run, t, repo_id, weights_sha256=weights, datasets_repo=datasets_repo).encode()
    branch = f"iter_{t}"
    branches = pushed_branches(repo_id, token)
    plan, ours = {}, {}
    for revision in [branch, "main"] if to_main else [branch]:
        remote = read_repo_text(repo_id, "README.md", revision, token=token) if revision in branches else None
        plan[revision] = _needed(remote, card, weights=weights, t=t, main=revision == "main")
        # A branch irpo made (or a new repo's main) holds exactly M_t's files; one with someone else's card,
        # or with files of its own and no card, keeps them.
        ours[revision] = (
            revision not in branches
            or pushed_model(remote) is not None
            or (remote is None and set(repo_files(repo_id, revision, token=token)) <= {".gitattributes"})
        )
    files = {**model_files(folder), "README.md": card}
    send = dict(repo_id=repo_id, retry=retry, token=token, private=private, run_root=run.root, repo_type="model")
    if plan[branch] == "all" and branch not in branches and plan.get("main") == "all" and ours["main"]:
        # A new iteration that is also the latest: one upload to main, and the branch made at that commit.
        commit = push_files(files=files, message=f"irpo: M_{t}", revision="main", replace=True, **send)
        create_branch(repo_id, branch, commit, retry, token)
        return ["main", branch]
    for revision, need in plan.items():
        if need == "all":
            push_files(files=files, message=f"irpo: M_{t}", revision=revision, replace=ours[revision], **send)
        elif need == "card":
            push_files(files={"README.md": card}, message=f"irpo: model card of M_{t}", revision=revision, **send)
    updated = [revision for revision, need in plan.items() if need]
    if not updated:
        log.info("%s has M_%d as it is here (branch %s); nothing to push", repo_id, t, branch)
    return updated


def _needed(remote: str | None, card: bytes, *, weights: str, t: int, main: bool) -> str | None:
    """What a branch whose README.md is `remote` lacks: None (it has this card), "card" (it has these
    weights), or "all"."""
    if remote is not None and remote.encode() == card:
        return None
    pushed = pushed_model(remote)
    if main and pushed and pushed.iteration > t:
        return None  # main holds a later iteration: it moves forward only
    if pushed and pushed.iteration == t and pushed.weights_sha256 == weights:
        return "card"
    return "all"
