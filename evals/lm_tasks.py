"""The functions our lm-eval task YAMLs (evals/irpo_*.yaml) call through `!function`.

The YAMLs keep lm-eval's own machinery (requests, repeats, chat templates, logging of samples,
aggregation) and hand it three things from irpo, so that evaluation sees exactly what the
builder sees:
- `load_docs`: the task's test split through `irpo.tasks` (the Hub by default, local
  files when `data_dir` is given as lm-eval metadata: `--metadata '{"data_dir": "..."}'`);
- `doc_to_text`: the builder's prompt (the task's user message; lm-eval applies the chat
  template with `--apply_chat_template`, as the builder does);
- `greedy_results` / `majority_results`: grading by `irpo.grading`, the reward's grader,
  and majority vote by `irpo.majority`; `grade_all`, the filter, grades every response of
  the task at once on every core first, so that these two read their verdicts from its caches.
Each also reports `grading_timeouts`: answers whose verification ran out of time (counted wrong),
summed over the task by `total`.
"""

from __future__ import annotations

import functools
import json
import logging

from irpo.grading import grade, grade_many
from irpo.majority import score_samples
from irpo.tasks import Question, get_task

log = logging.getLogger(__name__)


def load_docs(
    task: str,
    split: str = "test",
    data_dir: str | None = None,
    hub_id: str | None = None,
    task_options: dict | None = None,
    **_metadata,
):
    """lm-eval's `custom_dataset`: {split: Dataset} of one row per question.

    `task_options` are the task's own options (MATH: {"split_scheme": "paper", "prompt": "paper"}), as the
    card's task section sets them; each row carries them, so prompts and grading use the same task.
    lm-eval passes every metadata key (model arguments, version, ...) here too; unknown ones
    are ignored.
    """
    import datasets  # here: lm-eval imports this module while it indexes tasks it may not run

    options = json.dumps(task_options or {}, sort_keys=True)
    questions = _task(task, options).load(split, data_dir, hub_id).questions
    rows = {
        "task": [task] * len(questions),
        "task_options": [options] * len(questions),
        "question_id": [q.question_id for q in questions],
        "text": [q.text for q in questions],
        "gold": [q.gold for q in questions],
        "labels": [list(q.labels) for q in questions],
    }
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(rows)})


def _question(doc: dict) -> Question:
    return Question(doc["question_id"], doc["text"], doc["gold"], tuple(doc["labels"]))


@functools.lru_cache(maxsize=None)
def _task(name: str, options_json: str = "{}"):
    return get_task(name, **{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(options_json).items()})


def doc_task(doc: dict):
    """The task a row was loaded for, with its options."""
    return _task(doc["task"], doc.get("task_options") or "{}")


def doc_to_text(doc: dict) -> str:
    return doc_task(doc).user_message(_question(doc))


def grade_all(resps, docs):
    """lm-eval filter: keeps all k answers of each question (lm-eval's default keeps the first)
    and grades them all at once, on every core, before lm-eval scores them one question at a time."""
    resps = [list(r) for r in resps]
    if docs:
        completions = [c for r in resps for c in r]
        owners = [doc for doc, r in zip(docs, resps) for _ in r]
        grades = grade_many(doc_task(docs[0]), completions, [doc["gold"] for doc in owners])
        timed_out = sorted({doc["question_id"] for doc, g in zip(owners, grades) if g.timed_out})
        if timed_out:
            count = sum(g.timed_out for g in grades)
            log.warning(
                "grading ran out of time on %d answers, counted wrong; questions: %s", count, ", ".join(timed_out)
            )
    return resps


def total(values: list[float]) -> float:
    """lm-eval aggregation: the sum over questions (lm-eval has mean, not sum)."""
    return float(sum(values))


def greedy_results(doc: dict, results: list) -> dict:
    completions = results[0] if isinstance(results[0], list) else results
    result = grade(doc_task(doc), completions[0], doc["gold"])
    # greedy: any recognised answer style (lm-eval's flexible-extract); greedy_strict: right *and*
    # in the prompt's own format, which is the paper's exact match.
    return {
        "greedy": float(result.correct),
        "greedy_strict": float(result.correct and result.well_formed),
        "grading_timeouts": float(result.timed_out),
    }


def majority_results(doc: dict, results: list) -> dict:
    completions = results[0] if isinstance(results[0], list) else results
    scores = score_samples(doc_task(doc), completions, doc["gold"])
    return {
        "maj_at_k": float(scores.majority_correct),
        "pass_at_k": float(scores.any_correct),
        "sample_accuracy": scores.sample_accuracy,
        "grading_timeouts": float(scores.timeouts),
    }
