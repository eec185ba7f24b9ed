"""The functions our lm-eval task YAMLs (evals/irpo_*.yaml) call through `!function`.

The YAMLs keep lm-eval's own machinery (requests, repeats, chat templates, logging of samples,
aggregation) and hand it three things from irpo_data, so that evaluation sees exactly what the
builder sees:
- `load_docs`: the task's test split through `irpo_data.tasks` (the Hub by default, local
  files when `data_dir` is given as lm-eval metadata: `--metadata '{"data_dir": "..."}'`);
- `doc_to_text`: the builder's prompt (the task's user message; lm-eval applies the chat
  template with `--apply_chat_template`, as the builder does);
- `greedy_results` / `majority_results`: grading by `irpo_data.grading`, the reward's grader,
  and majority vote by `irpo_eval.majority`.
"""

from __future__ import annotations

from irpo_data.grading import grade
from irpo_data.tasks import Question, get_task
from irpo_eval.majority import score_samples


def load_docs(task: str, split: str = "test", data_dir: str | None = None, hub_id: str | None = None, **_metadata):
    """lm-eval's `custom_dataset`: {split: Dataset} of one row per question.

    lm-eval passes every metadata key (model arguments, version, ...) here too; unknown ones
    are ignored.
    """
    import datasets

    questions = get_task(task).load(split, data_dir, hub_id).questions
    rows = {
        "task": [task] * len(questions),
        "question_id": [q.question_id for q in questions],
        "text": [q.text for q in questions],
        "gold": [q.gold for q in questions],
        "labels": [list(q.labels) for q in questions],
    }
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(rows)})


def _question(doc: dict) -> Question:
    return Question(doc["question_id"], doc["text"], doc["gold"], tuple(doc["labels"]))


def doc_to_text(doc: dict) -> str:
    return get_task(doc["task"]).user_message(_question(doc))


def keep_all(resps, docs):
    """lm-eval filter that keeps all k answers of a question (its default keeps the first)."""
    return resps


def greedy_results(doc: dict, results: list) -> dict:
    completions = results[0] if isinstance(results[0], list) else results
    return {"acc": float(grade(doc["task"], completions[0], doc["gold"]).correct)}


def majority_results(doc: dict, results: list) -> dict:
    completions = results[0] if isinstance(results[0], list) else results
    scores = score_samples(doc["task"], completions, doc["gold"])
    return {
        "maj_acc": float(scores.majority_correct),
        "pass_acc": float(scores.any_correct),
        "sample_acc": scores.fraction_correct,
    }
