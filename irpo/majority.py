"""Majority vote over one question's sampled answers, and the metrics read off the same samples.

`majority_vote(task, answers)` takes the extracted final answers of one question's k samples
(`irpo.grading.grade(...).answer`; None where a sample gave no answer) and returns the
answer most samples agree on:
- a missing answer never votes (lm-eval's stock filter counts "[invalid]" as an answer, so
  20 unparseable samples out of 32 would win the vote);
- equivalent answers vote together, judged by the grader's own equivalence (math-verify for
  numbers and LaTeX): "0.5", "1/2" and "\\frac{1}{2}" are one answer with three votes;
- ties go to the answer whose first vote came earliest in sample order, so the result is a
  function of the samples alone (sample order is fixed by the seed);
- if no sample answered, the vote is None (counted wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

from irpo.grading import grade, is_equivalent
from irpo.tasks import Task, get_task


@dataclass(frozen=True)
class Vote:
    """One answer of a question's samples and who voted for it."""

    answer: str  # its first-seen spelling
    samples: tuple[int, ...]  # the indices of the samples that gave it (or an equivalent), in order

    @property
    def votes(self) -> int:
        return len(self.samples)


def vote_counts(task: Task | str, answers: list[str | None]) -> list[Vote]:
    """The answers of one question's samples, equivalent ones together, in the order of their first vote."""
    kind = (get_task(task) if isinstance(task, str) else task).answer_kind
    clusters: list[tuple[str, list[int]]] = []
    for index, answer in enumerate(answers):
        if answer is None or not answer.strip():
            continue
        for first, members in clusters:
            # Compare with the first member only: equivalence is checked against one spelling,
            # so a chain a~b~c cannot merge answers that are not equal to each other.
            if answer == first or is_equivalent(kind, first, answer):
                members.append(index)
                break
        else:
            clusters.append((answer, [index]))
    return [Vote(first, tuple(members)) for first, members in clusters]


def majority_vote(task: Task | str, answers: list[str | None]) -> str | None:
    """The winning answer of one question's samples (its first-seen spelling), or None."""
    votes = vote_counts(task, answers)
    # max() keeps the first of equal keys, and the votes are in order of their first vote.
    return max(votes, key=lambda v: v.votes).answer if votes else None


@dataclass(frozen=True)
class VoteLabels:
    """Self-consistency labels of one question without gold (ScPO, Prasad et al. 2024)."""

    winner: Vote  # the most-voted answer: its samples are the winners
    loser: Vote  # the least-voted: its samples are the losers
    margin: float  # (winner's votes - loser's votes) / samples: the pairs' weight


def vote_labels(task: Task | str, answers: list[str | None]) -> VoteLabels | None:
    """Winners and losers of one question by vote, counted as maj@k counts; None with fewer than two answers.

    Ties: the most-voted answer whose first vote came earliest wins (as majority_vote); among the
    least-voted, the one whose first vote came latest loses (irpo.pairs, pairs.label vote or mixed).
    """
    votes = vote_counts(task, answers)
    if len(votes) < 2:
        return None
    winner = max(votes, key=lambda v: v.votes)
    loser = min(reversed(votes), key=lambda v: v.votes)
    return VoteLabels(winner, loser, (winner.votes - loser.votes) / len(answers))


@dataclass(frozen=True)
class SampleScores:
    """What one question's k samples say: the vote is right, any is right, how many are right."""

    majority_correct: bool
    any_correct: bool  # pass@k
    sample_accuracy: float  # the share of the k samples that are right
    majority_answer: str | None
    timeouts: int = 0  # samples whose grading ran out of time (counted wrong)


def score_samples(task: Task | str, completions: list[str], gold: str) -> SampleScores:
    task = get_task(task) if isinstance(task, str) else task
    grades = [grade(task, text, gold) for text in completions]
    winner = majority_vote(task, [g.answer for g in grades])
    return SampleScores(
        majority_correct=winner is not None and is_equivalent(task.answer_kind, gold, winner),
        any_correct=any(g.correct for g in grades),
        sample_accuracy=sum(g.correct for g in grades) / len(grades) if grades else 0.0,
        majority_answer=winner,
        timeouts=sum(g.timed_out for g in grades),
    )
