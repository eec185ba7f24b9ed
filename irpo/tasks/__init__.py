"""Benchmarks as tasks: load a split, render the prompt, give the gold final answer.

One module per benchmark (`gsm8k`, `math`, `arc_challenge`, `demo`), each one `Task` subclass. A
task turns raw rows into `Question`s, for example GSM8K's

    {"question": "Natalia sold clips to 48 of her friends ...", "answer": "... #### 72"}

becomes `Question(question_id="gsm8k/train/0", text="Natalia sold ...", gold="72")`.

Rows come from the task's Hub dataset by default, or from `{data_dir}/{split}.jsonl` /
`.parquet` when a local folder is given. Rows with an empty (or null) gold answer are skipped and
counted. Everything else that cannot be a question is an error naming the file, the row and the
fix, raised when the split loads (before any model starts): a row that is not a JSON object, a
missing field or one of the wrong type, an empty question, a gold answer the task's grader cannot
read (a GSM8K gold that is no number, an ARC answer key that is not one of the row's labels), two
rows with one question id, and a file that is not UTF-8 or not parquet.

Adding a benchmark (docs/architecture.md walks through one):
1. `irpo/tasks/NAME.py`: a `Task` subclass with `name = "NAME"`, its class attributes (a missing
   one is an error when the module is imported) and `parse_row` / `user_message`. Defining the
   class registers it, and every module of this folder is imported with the package: no import
   line to add anywhere.
2. `cards/NAME.yaml`: the paper's settings for it (copy cards/gsm8k.yaml, change the task section).
3. `python -m irpo_eval.task_yamls`: writes its two lm-eval YAMLs (greedy and maj@k) from the card.
tests/test_tasks.py checks that every registered task has all three, and adds a small task to
prove the steps.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import json
import logging
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from irpo.errors import IrpoError

log = logging.getLogger(__name__)


class TaskError(IrpoError, ValueError):
    """A task name, split or data file that cannot be used."""


_REGISTRY: dict[str, type[Task]] = {}  # name -> class, filled by Task.__init_subclass__


@dataclass(frozen=True)
class Question:
    question_id: str
    text: str  # the question as the benchmark states it, options included for multiple choice
    gold: str  # gold final answer: a number, a LaTeX expression, or an option label
    labels: tuple[str, ...] = ()  # option labels for multiple choice ("A", "B", ... or "1", "2", ...)
    # The dataset's own worked solution, ending in the answer phrase the prompt asks for, so that
    # it grades as a correct, well-formed answer (train.objective=sft_gold trains on it). None when
    # the benchmark has none (ARC-Challenge gives only the answer key).
    solution: str | None = None

    @property
    def has_gold(self) -> bool:
        """False for a training question kept without a gold answer (pairs.label vote or mixed): gold is ""."""
        return bool(self.gold)


@dataclass(frozen=True)
class PaperResult:
    """One published number of Pang et al. (2024), and which of our leaderboard rows it belongs to.

    `iteration`: the model M_t it compares with (0 = the base model's CoT prompt); None for rows not
    on our greedy curve (maj@32, and baselines with no counterpart here). `objective`: the
    train.objective, or the ablation (dpo_nll_2x: twice the pairs), that reproduces it; None for M_0
    and for rows without one. `metric`: "greedy" or "maj@32"; `accuracy` in percent.

    The paper's "DPO initialized from SFT trained on chosen seqs" rows are the ablations dpo_from_sft
    and dpo_nll_from_sft (from models/M_1-sft_winners); our `dpo` starts from M_0, as its "DPO
    initialized from Llama-2-70b-chat" does. (Summaries of the paper that quote ARC-Challenge "DPO
    83.5" quote that SFT-initialised row; from M_0 it is 82.8.)
    """

    label: str
    accuracy: float
    iteration: int | None = None
    objective: str | None = None
    metric: Literal["greedy", "maj@32"] = "greedy"


PAPER = "Pang et al. 2024, Llama-2-70B-Chat"  # the model every PaperResult was measured on


@dataclass
class LoadedSplit:
    questions: list[Question]
    skipped_empty_gold: int = 0
    source: str = ""  # where the rows came from, for the dataset card's lineage
    without_gold: int = 0  # rows kept with no gold answer (keep_without_gold): labelled by vote


@dataclass(frozen=True)
class Task:
    """One benchmark. Subclasses set the class attributes and implement `parse_row`/`user_message`.

    A subclass that sets `name` is registered when it is defined (`__init_subclass__`). A task's
    options (MATH's split scheme and prompt, ARC's training sets) are its dataclass fields, set from
    the card's task section by `task_from_config`; a task without options has none.
    """

    name: ClassVar[str]
    hub_id: ClassVar[str]
    hub_config: ClassVar[str | None] = None
    license: ClassVar[str]  # Hub licence id of the source data, copied into the dataset card
    answer_kind: ClassVar[Literal["number", "latex", "choice"]]  # how grading compares answers
    # The paper's published numbers on this benchmark, printed beside ours on the leaderboard; an
    # empty tuple when the paper has none (a task must say so: there is no default).
    paper_results: ClassVar[tuple[PaperResult, ...]]
    # Regex (case-insensitive) of the answer phrase this task's prompt asks for; an answer
    # found after another phrase is still graded but the sample is not well formed.
    answer_phrase: ClassVar[str]
    required_fields: ClassVar[tuple[str, ...]]
    gold_field: ClassVar[str]  # the row's field that holds the gold answer: null there means "no gold"
    # Required fields whose value is not a string: their JSON type (a missing entry means str).
    field_types: ClassVar[dict[str, type]] = {}
    has_solutions: ClassVar[bool] = False  # True when questions carry a gold worked `solution`
    # Where a base model prompted with plain text runs on into an exemplar of its own: generation stops
    # there (irpo.prompts, plain style). "\nQuestion:", not "Question": the bare word occurs in
    # reasoning ("the question asks...") and would cut answers short (sglang PR 29264).
    run_on_markers: ClassVar[tuple[str, ...]] = ("\nQuestion:",)

    # What a registered task must set itself (the rest have defaults above).
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "hub_id",
        "license",
        "answer_kind",
        "answer_phrase",
        "required_fields",
        "gold_field",
        "paper_results",
    )

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return  # a shared base of several tasks, not a task of its own
        where = f"{cls.__module__}.{cls.__qualname__}"
        missing = [attr for attr in cls.REQUIRED if not hasattr(cls, attr)]
        if missing:
            raise TaskError(f"task {cls.name!r} ({where}) does not set {', '.join(missing)}; see irpo.tasks.Task")
        if cls.answer_kind not in ("number", "latex", "choice"):
            raise TaskError(
                f"task {cls.name!r} ({where}): answer_kind {cls.answer_kind!r} is not number, latex or choice"
            )
        known = _REGISTRY.get(cls.name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TaskError(
                f"two tasks are named {cls.name!r}: {known.__module__}.{known.__qualname__} and {where}; rename one"
            )
        _REGISTRY[cls.name] = cls  # a module imported again (a reload) replaces its own class

    def parse_row(self, row: dict[str, Any], split: str, index: int) -> Question | None:
        """A `Question`, or None when the row's gold answer is empty (skipped, counted)."""
        raise NotImplementedError

    def user_message(self, question: Question) -> str:
        raise NotImplementedError

    def gold_stand_in(self, row: dict[str, Any]) -> Any:
        """A gold field value parse_row accepts, for reading a row that has none (parse_unlabelled)."""
        return "0"

    def parse_unlabelled(self, row: dict[str, Any], split: str, index: int) -> Question | None:
        """The row's question without a gold answer (gold "", no solution), for pairs.label vote or mixed.

        parse_row reads the row with a stand-in gold, so a task's question text and id are built in one
        place; the stand-in is then taken out again and never reaches a prompt, a grade or a pair."""
        question = self.parse_row({**row, self.gold_field: self.gold_stand_in(row)}, split, index)
        return None if question is None else dataclasses.replace(question, gold="", solution=None)

    def messages(self, question: Question) -> list[dict[str, str]]:
        """Chat messages of the prompt; the sampler applies the model's chat template."""
        return [{"role": "user", "content": self.user_message(question)}]

    def gold_problem(self, question: Question) -> str | None:
        """Why the task's grader cannot read `question.gold` (every answer would be graded wrong), or None."""
        from irpo.grading import MAX_ANSWER_CHARS, PLAIN_NUMBER  # grading imports this module

        if self.answer_kind == "number" and not PLAIN_NUMBER.fullmatch(question.gold):
            return f"its gold answer {question.gold[:80]!r} is not a number"
        if self.answer_kind == "choice" and question.gold not in question.labels:
            return f"its answer key {question.gold[:80]!r} is not one of its labels {', '.join(question.labels)}"
        if self.answer_kind == "latex":
            depth = 0
            for char in question.gold.replace("\\{", "").replace("\\}", ""):
                depth += {"{": 1, "}": -1}.get(char, 0)
                if depth < 0:
                    break
            if depth != 0:
                return f"its gold answer {question.gold[:80]!r} has unbalanced braces"
            if len(question.gold) > MAX_ANSWER_CHARS:
                return f"its gold answer is {len(question.gold)} characters, over the grader's {MAX_ANSWER_CHARS}"
        return None

    def load(
        self, split: str, data_dir: str | None = None, hub_id: str | None = None, keep_without_gold: bool = False
    ) -> LoadedSplit:
        """The split's questions. Rows without a gold answer are skipped and counted, or with `keep_without_gold`
        (training questions labelled by vote) kept with gold "" (Question.has_gold is False)."""
        rows, source = self.read_rows(split, data_dir, hub_id)
        questions, skipped, rows_of = [], 0, {}
        for index, row in enumerate(rows):
            where = f"{source} row {index + 1}"
            question = self._question(row, split, index, where, keep_without_gold)
            if question is None:
                skipped += 1
                continue
            questions.append(question)
            rows_of.setdefault(question.question_id, []).append(index + 1)
        repeated = {qid: at for qid, at in rows_of.items() if len(at) > 1}
        if repeated:
            shown = "; ".join(f"{qid!r} in rows {', '.join(map(str, at))}" for qid, at in list(repeated.items())[:3])
            raise TaskError(
                f"{source} has {len(repeated)} question id(s) on more than one row ({shown}); a question id names one "
                "question: remove the duplicate rows or give them ids of their own"
            )
        if not questions:
            raise TaskError(f"{source} has no usable questions ({skipped} with an empty gold answer)")
        if skipped:
            log.info("%s: skipped %d rows (an empty gold answer, or a prompt exemplar)", source, skipped)
        unlabelled = sum(not q.has_gold for q in questions)
        if unlabelled:
            log.info("%s: kept %d questions without a gold answer (labelled by vote)", source, unlabelled)
        return LoadedSplit(questions, skipped, source, unlabelled)

    def _question(self, row: Any, split: str, index: int, where: str, keep_without_gold: bool = False):
        """The row's question, None when it has no gold answer (unless kept), or a TaskError naming what is wrong."""
        if not isinstance(row, dict):
            raise TaskError(f"{where} is {type(row).__name__}, not a JSON object; fix or remove that row")
        missing = [k for k in self.required_fields if k not in row]
        if missing:
            raise TaskError(
                f"{where} has no field {', '.join(missing)} (task {self.name} needs "
                f"{', '.join(self.required_fields)}); fix the row or pick the task that matches the file"
            )
        no_gold = row[self.gold_field] is None
        if no_gold and not keep_without_gold:
            return None  # no gold answer: skipped and counted, as an empty one
        for name in self.required_fields:
            if no_gold and name == self.gold_field:
                continue
            kind = self.field_types.get(name, str)
            if not isinstance(row[name], kind) or isinstance(row[name], bool):
                raise TaskError(
                    f"{where}: field {name} is {type(row[name]).__name__}, not {kind.__name__}; fix that row"
                )
        question = None if no_gold else self.parse_row(row, split, index)
        if question is None and keep_without_gold:
            question = self.parse_unlabelled(row, split, index)
        if question is None:
            return None
        if not question.text.strip():
            raise TaskError(f"{where} has an empty question; fix or remove that row")
        problem = self.gold_problem(question) if question.has_gold else None
        if problem:
            raise TaskError(f"{where} ({question.question_id}): {problem}; fix that row's gold answer")
        return question

    def read_rows(self, split: str, data_dir: str | None, hub_id: str | None) -> tuple[list[Any], str]:
        """Raw rows and a description of their source: local files if given, else the Hub."""
        if data_dir is not None:
            return read_local(Path(data_dir).expanduser(), split)
        return self._read_hub_config(split, hub_id or self.hub_id, self.hub_config)

    def _read_hub_config(self, split: str, hub_id: str, config: str | None) -> tuple[list[dict], str]:
        import datasets  # imported here: a local-file build should not pay for it

        source = f"hf://{hub_id}" + (f"/{config}" if config else "") + f" split {split}"
        try:
            ds = datasets.load_dataset(hub_id, config, split=split)
        except Exception as exc:  # network, offline mode, missing split: all need the same advice
            raise TaskError(
                f"could not load {source} from the Hugging Face Hub ({type(exc).__name__}: {exc}); "
                f"check the network or HF_HUB_OFFLINE, or set task.data_dir to a folder with {split}.jsonl"
            ) from None
        return list(ds), source


def read_local(folder: Path, split: str) -> tuple[list[Any], str]:
    jsonl, parquet = folder / f"{split}.jsonl", folder / f"{split}.parquet"
    if jsonl.is_file():
        rows = []
        with jsonl.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise TaskError(
                        f"{jsonl} line {number} is not UTF-8 text (byte {exc.start}); save the file as UTF-8"
                    ) from None
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except (json.JSONDecodeError, RecursionError) as exc:
                    why = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deep"
                    raise TaskError(f"{jsonl} line {number} is not valid JSON ({why}); fix or remove it") from None
        return rows, str(jsonl)
    if parquet.is_file():
        import polars as pl

        try:
            return pl.read_parquet(parquet).to_dicts(), str(parquet)
        except Exception as exc:  # noqa: BLE001  (polars has several error kinds for a file that is not parquet)
            raise TaskError(
                f"{parquet} is not a readable parquet file ({type(exc).__name__}); write it again, or point "
                "task.data_dir at the right folder"
            ) from None
    raise TaskError(f"no {split}.jsonl or {split}.parquet in {folder}; check task.data_dir and the split name")


def split_held_out(questions: list[Question], held_out: int) -> tuple[list[Question], list[Question]]:
    """Split off `held_out` questions for checkpoint choice, the same ones on every run.

    The choice hashes each question id (no seed), so the held-out set never changes with the
    card's seed or iteration and is never sampled for pairs. Both parts keep the file's order.
    Only questions with a gold answer can be held out: the checks grade against it.
    """
    labelled = [q for q in questions if q.has_gold]
    if held_out >= len(questions):
        raise TaskError(
            f"task.held_out={held_out} leaves no training questions out of {len(questions)}; lower task.held_out"
        )
    if held_out > len(labelled):
        raise TaskError(
            f"task.held_out={held_out}, but only {len(labelled)} of the {len(questions)} training questions have a "
            "gold answer, which the held-out checks grade against; lower task.held_out, or choose the step on a "
            "split with gold answers (task.selection_split)"
        )
    ranked = sorted(labelled, key=lambda q: hashlib.sha256(q.question_id.encode()).digest())
    held_ids = {q.question_id for q in ranked[:held_out]}
    train = [q for q in questions if q.question_id not in held_ids]
    held = [q for q in questions if q.question_id in held_ids]
    return train, held


def task_class(name: str) -> type[Task]:
    """The registered task class `name`, or a TaskError naming the known ones."""
    if name not in _REGISTRY:
        near = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise TaskError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_task(name: str, **options) -> Task:
    """The registered task `name`, with its options (e.g. get_task("math", split_scheme="paper"))."""
    cls = task_class(name)
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        where = f"its options are {', '.join(f'task.{k}' for k in known)}" if known else "it takes no options"
        raise TaskError(f"task {name} has no option {', '.join(f'task.{k}' for k in unknown)}; {where}")
    return cls(**options)


def task_from_config(config) -> Task:
    """The task a card's `task` section names, with the options it sets (TaskConfig.options())."""
    return get_task(config.name, **config.options())


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def discover_tasks() -> None:
    """Import every module of this package (each registers its tasks); again, only new ones."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


discover_tasks()  # last: the task modules import this package's names above
