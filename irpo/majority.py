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


def majority_vote(task: Task | str, answers: list[str | None]) -> str | None:
    """The winning answer of one question's samples (its first-seen spelling), or None."""
    kind = (get_task(task) if isinstance(task, str) else task).answer_kind
    clusters: list[list[str]] = []  # each: the answers judged equal, in sample order
    for answer in answers:
        if answer is None or not answer.strip():
            continue
        for cluster in clusters:
            # Compare with the first member only: equivalence is checked against one spelling,
            # so a chain a~b~c cannot merge answers that are not equal to each other.
            if answer == cluster[0] or is_equivalent(kind, cluster[0], answer):
                cluster.append(answer)
                break
        else:
            clusters.append([answer])
    if not clusters:
        return None
    # max() keeps the first of equal keys, and clusters are in order of their first vote.
    return max(clusters, key=len)[0]


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
