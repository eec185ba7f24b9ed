"""`irpo run --push-to-hub ORG/NAME`: every finished iteration and the leaderboard reach the Hub, sooner or later.

    pushes = Pushes.start("me/irpo-gsm8k", private=None)   # checks the id now, and access when online
    pushes.catch_up(run, upto=2)      # each finished iteration the repo has no tag for (iter_t-<fingerprint>)
    pushes.leaderboard(run, "gsm8k")  # evals/ and leaderboard.* after the last evaluation

Pushing is never what stops a run: days of GPU work go on when the network, the token or the Hub
fails. A failed push is a warning, and the next `irpo run --push-to-hub` (offline runs included)
pushes whatever the repo does not have yet, found by its tags: an iteration built before
--push-to-hub was given, or whose push failed, is pushed on the rerun that skips its build.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from irpo.hub import HubError, check_access, check_repo_id, iteration_tag, offline, push_files, pushed_tags
from irpo.reading import RecordError
from irpo.records import BuildManifest
from irpo.runs import RunFolder
from irpo_data.publish import push_iteration

log = logging.getLogger(__name__)


@dataclass
class Pushes:
    repo_id: str | None  # None: --push-to-hub not given, nothing to do
    private: bool | None = None  # a new repo's visibility; None: the Hub's default for the user or org
    online: bool = True
    failed: list[str] = field(default_factory=list)  # what did not reach the Hub in this run

    @classmethod
    def start(cls, repo_id: str | None, private: bool | None = None) -> "Pushes":
        """Check the repo id (always) and access (online) before any work; say what offline means."""
        if repo_id is None:
            return cls(None)
        check_repo_id(repo_id)
        if offline():
            log.warning(
                "HF_HUB_OFFLINE is set: nothing is pushed to %s in this run; the pushes catch up on the next run "
                "with --push-to-hub and the network",
                repo_id,
            )
            return cls(repo_id, private, online=False)
        if not check_access(repo_id):
            log.warning("nothing is pushed to %s in this run; the pushes catch up on the next run online", repo_id)
            return cls(repo_id, private, online=False)
        return cls(repo_id, private)

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

    def _failed(self, what: str, exc: Exception) -> None:
        self.failed.append(what)
        log.warning("%s did not reach %s (%s); the run goes on, and the next run catches up", what, self.repo_id, exc)
