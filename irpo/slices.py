"""Semi-online iterations: the slices an iteration samples and trains in turn (sampling.resample_every).

Lanchantin et al. (2025, "Bridging Offline and Online Reinforcement Learning for LLMs") re-sample from the
policy being trained every s steps instead of once before training (offline, the paper's) or every step
(online). With `sampling.resample_every: s`, iteration t's training questions are dealt into
ceil(train.max_steps / s) slices (question k goes to slice k mod n, so each slice is a fair share), and

    slice 0: sample, grade, pair from M_(t-1)        -> train steps [0, s)
    slice 1: sample, grade, pair from the step-s weights -> train steps [s, 2s)
    ...

Each slice is a build of its own (iter_t/samples/slice-J: shards, resumable, with a settings.json naming the
weights it was sampled from; iter_t/slices/slice-J/pairs and record.json), and each training segment goes on
from the one before (the same optimizer state, learning-rate schedule and step count: one Trainer run resumed
on the next slice's pairs). DPO's reference stays M_(t-1) for every slice: the reference pass scores each
slice's pairs with it. When the last slice is built, the iteration's pairs/ (every slice's, with a `slice`
column), dataset card and manifest are published as any build's.

The step is still chosen on the held-out questions (train.select_every, and at the end of every slice);
the paper's retrain on all questions is refused: it would train again, offline, on pairs sampled from weights
it never passes through. The weight hand-over is a saved model folder and a new engine started on it: the
build runs in a process of its own after the training processes have exited, so on a GPU the engine and the
trainer never need memory at once (BENCHMARKS.md measures its cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

from irpo.card import Card
from irpo.errors import SettingError
from irpo.objectives import OBJECTIVES

T = TypeVar("T")


@dataclass(frozen=True)
class SlicePlan:
    every: int  # training steps per slice (sampling.resample_every)
    max_steps: int  # train.max_steps

    @property
    def count(self) -> int:
        return math.ceil(self.max_steps / self.every)

    def steps(self, j: int) -> tuple[int, int]:
        """The training steps [start, end) of slice j."""
        return j * self.every, min((j + 1) * self.every, self.max_steps)

    def share(self, items: list[T], j: int) -> list[T]:
        """Slice j's share of the iteration's questions: every count-th, from the j-th."""
        return items[j :: self.count]

    def last(self, j: int) -> bool:
        return j == self.count - 1

    def check_index(self, j: int) -> None:
        if not 0 <= j < self.count:
            raise SettingError(
                f"--slice {j} does not exist: train.max_steps={self.max_steps} in slices of "
                f"sampling.resample_every={self.every} steps makes slices 0 to {self.count - 1}"
            )


def slice_plan(card: Card) -> SlicePlan | None:
    """The card's slices, None for the paper's offline iteration; a SettingError for what cannot run."""
    every = card.sampling.resample_every
    if every is None:
        return None
    problems = []
    if every < 1 or every > card.train.max_steps:
        problems.append(f"sampling.resample_every={every} must be between 1 and train.max_steps={card.train.max_steps}")
    if card.train.retrain_with_held_out and card.task.selection_split is None:
        problems.append(
            "train.retrain_with_held_out=true would train again, offline, on pairs sampled from weights it never "
            "passes through; set it to false (the step is chosen on the held-out questions as before)"
        )
    if card.train.lora:
        problems.append("train.lora=true: each slice samples from full weights; set train.lora=false")
    if OBJECTIVES[card.train.objective].rows == "gold":
        problems.append(f"train.objective={card.train.objective} trains on no samples; nothing to re-sample")
    if card.ablations:
        problems.append("ablations train side models offline from iteration 1's pairs; run them on an offline card")
    if problems:
        raise SettingError("sampling.resample_every (semi-online iterations): " + "; ".join(problems))
    return SlicePlan(every, card.train.max_steps)


def plan_of_slice(card: Card, iteration: int, index: int, command: str) -> SlicePlan:
    """The card's slices for `command --slice index`; a SettingError on an offline card or a slice past the last."""
    plan = slice_plan(card)
    if plan is None:
        raise SettingError(
            "--slice needs sampling.resample_every (semi-online iterations); without it, run the whole iteration "
            f"with `{command} --iter {iteration}`"
        )
    plan.check_index(index)
    return plan


def require_offline(card: Card, command: str) -> None:
    """A command that samples or trains a whole iteration at once, refused on a semi-online card."""
    plan = slice_plan(card)
    if plan is not None:
        raise SettingError(
            f"sampling.resample_every={plan.every}: iteration slices {plan.count} times; {command} one slice at a "
            f"time with --slice J (J = 0 .. {plan.count - 1}, built then trained in turn), or let `irpo run` do it"
        )
