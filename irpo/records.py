"""The three records a run folder keeps, as types: what each stage wrote, read back by the others.

    iter_t/manifest.json               BuildManifest   (irpo_data.build writes it; train, loop, summary read it)
    models/M_t/train_manifest.json     TrainManifest   (irpo_train.train; run_eval, summary, loop)
    evals/MODEL.json                   EvalRecord      (irpo_eval.evaluate; leaderboard, summary)

`from_json` also reads the records of runs made before a key was renamed (the old name is in
`LEGACY_KEYS`), so an old run folder still loads; `to_json` writes today's names only. Unknown
keys are kept in `extra` rather than dropped, so a newer record read by an older reader loses
nothing when written back.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from irpo.reading import read_json, read_parquet, unreadable
from irpo.runs import write_json_atomic
from irpo.tasks import Question

R = TypeVar("R", bound="Record")

# Keys renamed on 2026-12 (old name -> new): one name per quantity, end to end.
LEGACY_KEYS = {
    "dataset_fingerprint": "pairs_fingerprint",  # the pair dataset's content hash: one name everywhere
    "maj": "maj_at_k",
    "pass": "pass_at_k",
    "sample_mean": "sample_accuracy",  # the share of sampled answers that are right
    "chosen_step": "selected_step",  # issue 33: "chosen" is the pairs' winner; the checkpoint is selected
}
LEGACY_COUNTS = {"train_accuracy": "sample_accuracy"}


def _is(value: Any, kind: Any) -> bool:
    """Whether a JSON value fits a record field's annotation (int for float is fine; a bool is no number)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, arg) for arg in typing.get_args(kind))
    if kind is Any:
        return True
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or kind)


@dataclass
class Record:
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as they were
    # (field, type) pairs an older release wrote, which __post_init__ converts
    legacy_types: ClassVar[set] = set()

    @classmethod
    def from_dict(cls: type[R], data: dict) -> R:
        data = {LEGACY_KEYS.get(k, k): v for k, v in data.items()}
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def from_json(cls: type[R], path: Path) -> R:
        """The record in `path`; an unreadable file or a field of the wrong type is one RecordError naming it."""
        data = read_json(path)
        data = {LEGACY_KEYS.get(k, k): v for k, v in data.items()}
        hints = typing.get_type_hints(cls)
        wrong = [
            k
            for k, v in data.items()
            if k in hints and k != "extra" and not _is(v, hints[k]) and (k, type(v)) not in cls.legacy_types
        ]
        if wrong:
            raise unreadable(path, f"{wrong[0]} is {type(data[wrong[0]]).__name__}, not {hints[wrong[0]]}")
        return cls.from_dict(data)

    def __post_init__(self) -> None:
        pass

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **data}

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict())


@dataclass
class BuildManifest(Record):
    """iter_t/manifest.json: what one iteration's pairs were built from, and their counts."""

    build_card_sha256: str = ""  # hash of the card sections the pairs depend on (card.BUILD_SECTIONS)
    weights_sha256: str = ""  # of the sampling model
    pairs_fingerprint: str = ""  # sha256 of the pair table's content
    iteration: int = 0
    run: str = ""
    task: str = ""
    task_options: dict = field(default_factory=dict)
    seed: int = 0
    model: str = ""  # the sampling model as the card or --model named it
    previous_iteration: int | None = None
    data_sha256: str = ""  # of the sampled questions and their prompts
    data_source: str = ""
    rows_skipped_empty_gold: int = 0
    held_out_questions: int = 0
    held_out_sampled: bool = False  # the held-out questions were sampled and paired (for the retrain)
    temperature: float = 0.0
    pairs_settings: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)  # samples/settings.json: engine, dtype, params
    sampling_seconds: float = 0.0
    sampling_tokens_per_s: float | None = None
    timings: dict = field(default_factory=dict)  # irpo.timing: seconds per phase, vLLM starts
    counts: dict = field(default_factory=dict)  # irpo.pairs.build_pairs's counts
    hardware: dict = field(default_factory=dict)  # irpo.hardware.describe()
    irpo_version: str = ""

    def __post_init__(self) -> None:
        self.counts = {LEGACY_COUNTS.get(k, k): v for k, v in self.counts.items()}
        if not self.build_card_sha256 and "card_sha256" in self.extra:  # before 2026-12
            self.build_card_sha256 = self.extra.pop("card_sha256")


@dataclass
class TrainManifest(Record):
    """models/M_t/train_manifest.json: what a model was trained from, how, and which step won."""

    legacy_types: ClassVar[set] = {("ablation", bool)}  # before 2026-12: a flag

    train_card_sha256: str = ""  # hash of the card sections training depends on (card.TRAIN_SECTIONS)
    pairs_fingerprint: str = ""
    reference_weights_sha256: str = ""  # M_{t-1}: the starting point (and the reference, train.reference=previous)
    bf16: bool = False  # as train.bf16 resolved on the machine that trained
    iteration: int = 0
    reference: str = ""  # the model DPO compared the policy with
    # train.reference=initial at t >= 2: M_0's weights, the reference; None where it is M_{t-1}
    fixed_reference_weights_sha256: str | None = None
    objective: str = "dpo_nll"
    ablation: str | None = None  # the ablation's name (models/M_t-NAME); None on the main line
    trained_on: str = "the pairs"
    rows_trained: int = 0
    selected_step: int | None = None  # the held-out checks' choice (checkpoint_choice.json)
    held_out_accuracy: float | None = None
    why: str = ""
    held_out_questions: int = 0
    retrained: bool = False  # the retrain on all pairs made the model (train.retrain_with_held_out)
    steps: int = 0  # of the run that made the model
    selection_steps: int | None = None  # of the selection run
    pairs_trained: int = 0
    pairs_dropped_too_long: int = 0
    # train.reference_logps (precompute, per_step), or "probe pairs only" for the SFT objectives;
    # reference_tokens_per_s is the speed of the pass before training (all pairs, or the probe's)
    reference_logps: str | None = None
    reference_tokens_per_s: float | None = None
    timings: dict = field(default_factory=dict)  # irpo.timing: seconds per phase, vLLM starts
    selection: dict | None = None  # with the retrain: the selection run's pairs and their fingerprint
    gold: dict | None = None  # sft_gold: the gold solutions trained on
    # sampling.resample_every: the slices, each with its steps, pairs and the weights it ended with (irpo.slices)
    semi_online: dict | None = None
    hardware: dict = field(default_factory=dict)  # irpo.hardware.describe(): weights differ across CPUs in bf16
    irpo_version: str = ""

    def __post_init__(self) -> None:
        if not self.train_card_sha256 and "card_sha256" in self.extra:  # before 2026-12
            self.train_card_sha256 = self.extra.pop("card_sha256")
        if self.ablation is True or self.ablation is False:  # before 2026-12: a flag
            self.ablation = None
        if self.selection_steps is None:
            self.selection_steps = self.steps

    def identity(self) -> dict[str, Any]:
        """The keys a rerun compares to decide that this model is already trained."""
        return {
            "train_card_sha256": self.train_card_sha256,
            "pairs_fingerprint": self.pairs_fingerprint,
            "reference_weights_sha256": self.reference_weights_sha256,
            "bf16": self.bf16,
        }


@dataclass
class EvalRecord(Record):
    """evals/MODEL.json: one model's test accuracy, and the key (weights, settings) it belongs to."""

    key: dict = field(default_factory=dict)  # irpo_eval.evaluate.result_key: reused only when it matches
    model: str = ""
    task: str = ""
    questions: int = 0
    greedy: float = 0.0  # right in any recognised answer style (flexible)
    greedy_strict: float | None = None  # right and in the prompt's format: the paper's exact match
    maj_k: int = 0
    maj_at_k: float = 0.0  # the majority answer of k samples is right
    pass_at_k: float = 0.0  # any of the k samples is right
    sample_accuracy: float = 0.0  # the share of the k samples that are right
    grading_timeouts: int = 0
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)  # irpo.timing: seconds per phase, vLLM starts
    hardware: dict = field(default_factory=dict)  # where it ran (not in the key: a result is reused on any machine)
    lm_eval: dict = field(default_factory=dict)  # lm-eval's own results block


# --- iter_t/questions.parquet: the questions an iteration was built from ---------------------------

QUESTION_COLUMNS = (
    "question_id",
    "role",  # "train" or "held_out" (chooses the step: held-out training questions, or task.selection_split)
    "sampled",  # sampled and paired in this iteration (held-out ones too, for the paper's retrain)
    "text",
    "gold",
    "labels",
    "solution",
    "prompt",  # as the model sees it (text), and as the engines are given it:
    "prompt_token_ids",  # null where the prompt overflows the context (never sent)
)


@dataclass
class IterationQuestions:
    """What the build chose for an iteration (the split, the prompts), as the trainer reads it back
    instead of making those choices again."""

    train: list  # irpo.tasks.Question
    held_out: list
    sampled: list
    prompt_ids: dict[str, list[int]]  # question id -> the prompt's ids, for prompts within the context

    @classmethod
    def table(cls, train: list, held_out: list, sampled_ids: set[str], prompts: dict[str, tuple[str, list[int]]]):
        """The polars table the build writes; `prompts`: question id -> (text, ids) for those within the context."""
        import polars as pl  # here: the trainer reads records where polars may be absent (bench/gpu_train.py)

        rows = [(q, "train") for q in train] + [(q, "held_out") for q in held_out]
        return pl.DataFrame(
            {
                "question_id": [q.question_id for q, _ in rows],
                "role": [role for _, role in rows],
                "sampled": [q.question_id in sampled_ids for q, _ in rows],
                "text": [q.text for q, _ in rows],
                "gold": [q.gold for q, _ in rows],
                "labels": [list(q.labels) for q, _ in rows],
                "solution": [q.solution for q, _ in rows],
                "prompt": [prompts.get(q.question_id, (None, None))[0] for q, _ in rows],
                "prompt_token_ids": [prompts.get(q.question_id, (None, None))[1] for q, _ in rows],
            },
            schema={
                "question_id": pl.String,
                "role": pl.String,
                "sampled": pl.Boolean,
                "text": pl.String,
                "gold": pl.String,
                "labels": pl.List(pl.String),
                "solution": pl.String,
                "prompt": pl.String,
                "prompt_token_ids": pl.List(pl.Int32),
            },
        )

    @classmethod
    def read(cls, path: Path) -> "IterationQuestions":
        import polars as pl

        frame = read_parquet(path, {"question_id": pl.String, "role": pl.String, "sampled": pl.Boolean})
        train, held_out, sampled, ids = [], [], [], {}
        for row in frame.iter_rows(named=True):
            question = Question(
                row["question_id"], row["text"], row["gold"], tuple(row["labels"] or ()), row["solution"]
            )
            (held_out if row["role"] == "held_out" else train).append(question)
            if row["sampled"]:
                sampled.append(question)
            if row["prompt_token_ids"] is not None:
                ids[question.question_id] = list(row["prompt_token_ids"])
        return cls(train, held_out, sampled, ids)
