"""`irpo run --push-to-hub ORG/NAME --push-models-to-hub ORG/NAME2`: every finished iteration, the
leaderboard and every model reach the Hub, sooner or later.

    pushes = Pushes.start("me/irpo-gsm8k", private=None, models_repo="me/irpo-gsm8k-models")  # ids, access
    pushes.catch_up(run, upto=2)      # each finished iteration the repo has no tag for (iter_t-<fingerprint>)
    pushes.models(run, upto=2)        # each M_t the model repo lacks, or holds with another card; main: M_2
    pushes.leaderboard(run, "gsm8k")  # evals/ and leaderboard.* after the last evaluation

Pushing is never what stops a run: days of GPU work go on when the network, the token or the Hub
fails. A failed push is a warning, and the next `irpo run --push-to-hub` (offline runs included)
pushes whatever the repo does not have yet, found by its tags: an iteration built before
--push-to-hub was given, or whose push failed, is pushed on the rerun that skips its build. The
model repo is found out by its branches and their cards (irpo.model_repo): a model pushed before its
evaluation gets its test results on the rerun, and a model pushed as it is, nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from irpo.errors import IrpoError
from irpo.hub import HubError, check_access, check_repo_id, iteration_tag, offline, push_files, pushed_tags
from irpo.model_repo import push_model
from irpo.reading import RecordError
from irpo.records import BuildManifest
from irpo.runs import RunFolder
from irpo_data.publish import push_iteration

log = logging.getLogger(__name__)


@dataclass
class Pushes:
    repo_id: str | None  # --push-to-hub: the dataset repo; None: no dataset pushes
    private: bool | None = None  # a new repo's visibility; None: the Hub's default for the user or org
    online: bool = True
    failed: list[str] = field(default_factory=list)  # what did not reach the Hub in this run
    models_repo: str | None = None  # --push-models-to-hub: the model repo; None: no model pushes

    @classmethod
    def start(cls, repo_id: str | None, private: bool | None = None, models_repo: str | None = None) -> "Pushes":
        """Check the repo ids (always) and access (online) before any work; say what offline means."""
        if repo_id is None and models_repo is None:
            return cls(None)
        if repo_id is not None:
            check_repo_id(repo_id)
        if models_repo is not None:
            check_repo_id(models_repo, "--push-models-to-hub")
        repos = [repo for repo in (repo_id, models_repo) if repo is not None]
        named = " and ".join(repos)
        if offline():
            log.warning(
                "HF_HUB_OFFLINE is set: nothing is pushed to %s in this run; the pushes catch up on the next run with "
                "the same push options and the network",
                named,
            )
            return cls(repo_id, private, online=False, models_repo=models_repo)
        if not all(check_access(repo) for repo in repos):  # the first unreachable one says so
            log.warning("nothing is pushed to %s in this run; the pushes catch up on the next run online", named)
            return cls(repo_id, private, online=False, models_repo=models_repo)
        return cls(repo_id, private, models_repo=models_repo)

    def catch_up(self, run: RunFolder, upto: int) -> None:
        """Push every finished iteration 1..upto whose tag the repo does not have."""
        if not (self.repo_id and self.online):
            return
        try:
            tags = pushed_tags(self.repo_id)
        except HubError as exc:
            self._failed("the iterations", exc)
            return
        for t in range(1, upto + 1):
            if not run.manifest(t).is_file():
                continue
            try:
                fingerprint = BuildManifest.from_json(run.manifest(t)).pairs_fingerprint
                if iteration_tag(t, fingerprint) not in tags:
                    push_iteration(run.iteration(t), self.repo_id, t, fingerprint, private=self.private)
            except (HubError, RecordError, OSError) as exc:  # never what stops the run
                self._failed(f"iteration {t}", exc)

    def leaderboard(self, run: RunFolder, card_name: str) -> None:
        """evals/*.json and the leaderboard files, in one commit."""
        if not (self.repo_id and self.online):
            return
        files = {f"evals/{p.name}": p for p in sorted(run.evals.glob("M_*.json"))}
        files.update({p.name: p for p in run.leaderboard() if p.is_file()})
        if not files:
            return
        try:
            push_files(
                self.repo_id,
                files,
                f"irpo: leaderboard of run {card_name}",
                retry=f"irpo eval --card {card_name} --push-to-hub {self.repo_id}",
                private=self.private,
                run_root=run.root,
            )
        except (HubError, OSError) as exc:
            self._failed("the leaderboard", exc)

    def models(self, run: RunFolder, upto: int) -> None:
        """Push every finished M_1..M_upto the model repo lacks (irpo.model_repo); main gets the latest of them."""
        if not (self.models_repo and self.online):
            return
        finished = [t for t in range(1, upto + 1) if run.train_manifest(t).is_file()]
        retry = f"irpo run --card {run.root.name} --push-models-to-hub {self.models_repo}" + (
            f" --push-to-hub {self.repo_id}" if self.repo_id else ""
        )
        for t in finished:
            try:
                push_model(
                    run,
                    t,
                    self.models_repo,
                    retry=retry,
                    datasets_repo=self.repo_id,
                    private=self.private,
                    to_main=t == finished[-1],
                )
            except (IrpoError, OSError) as exc:  # the Hub, an unreadable record: never what stops the run
                self._failed(f"M_{t}", exc, self.models_repo)

    def _failed(self, what: str, exc: Exception, repo_id: str | None = None) -> None:
        self.failed.append(what)
        log.warning(
            "%s did not reach %s (%s); the run goes on, and the next run catches up", what, repo_id or self.repo_id, exc
        )
