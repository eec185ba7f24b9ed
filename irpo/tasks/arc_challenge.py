"""ARC: grade-school science, multiple choice; gold = the option label. Tested on ARC-Challenge.

Row: {"id": "Mercury_7175875", "question": "An astronomer observes ...",
      "choices": {"text": ["...", ...], "label": ["A", "B", "C", "D"]}, "answerKey": "C"}

As the paper (§3.2): "We only train on the training set (both easy and challenge sets)", so the
train split pools the train splits of `train_subsets` (ARC-Easy's 2,251 and ARC-Challenge's 1,119
questions); every other split (validation: the checkpoint choice, test) is ARC-Challenge's.
Prompt (App. B.1, word for word; line breaks as we read the listing):

    Your task is to answer the question below. Give step by step reasoning before you answer,
    and when you're ready to answer, conclude using the format "Final answer: (insert letter here)"
    Question: An astronomer observes ...
    (A) ...
    (B) ...
    Solution:

Local files: task.data_dir holds `arc_challenge/` and `arc_easy/` folders of {split}.jsonl (as
../shared/data does), or is the ARC-Challenge folder itself with `arc_easy/` beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irpo.tasks import PaperResult, Question, Task, TaskError, read_local
from irpo.tasks.gsm8k import paper_prompt

INSTRUCTION = (
    "Your task is to answer the question below. Give step by step reasoning before you answer, "
    'and when you\'re ready to answer, conclude using the format "Final answer: (insert letter here)"'
)
SUBSETS = ("ARC-Easy", "ARC-Challenge")  # Hub configs of allenai/ai2_arc


@dataclass(frozen=True)
class ARCChallenge(Task):
    name = "arc_challenge"
    hub_id = "allenai/ai2_arc"
    hub_config = "ARC-Challenge"
    license = "cc-by-sa-4.0"
    answer_kind = "choice"
    answer_phrase = r"final answer\s*:"
    required_fields = ("id", "question", "choices", "answerKey")
    gold_field = "answerKey"
    field_types = {"choices": dict}
    # Table 2 of the paper (NeurIPS 2024 version).
    paper_results = (
        PaperResult("zero-shot CoT", 77.8, 0),
        PaperResult("zero-shot CoT, maj@32", 82.9, metric="maj@32"),
        *(PaperResult(f"iterative RPO, iteration {t}", a, t, "dpo_nll") for t, a in enumerate([84.8, 86.2, 86.7], 1)),
        PaperResult("iterative RPO, iteration 3, maj@32", 87.9, metric="maj@32"),
        PaperResult("SFT on chosen sequences", 79.8, 1, "sft_winners"),
        PaperResult("DPO initialized from Llama-2-70b-chat", 82.8, 1, "dpo"),
        PaperResult("DPO initialized from SFT on chosen sequences", 83.5, 1, "dpo_from_sft"),
    )
    train_subsets: tuple[str, ...] = SUBSETS  # pooled for the train split; the paper uses both

    def __post_init__(self):
        bad = [s for s in self.train_subsets if s not in SUBSETS]
        if bad or not self.train_subsets:
            raise TaskError(f"task.train_subsets has {list(self.train_subsets)!r}; choose from {', '.join(SUBSETS)}")

    def read_rows(self, split: str, data_dir: str | None, hub_id: str | None) -> tuple[list[Any], str]:
        subsets = self.train_subsets if split == "train" else ("ARC-Challenge",)
        rows, sources = [], []
        for subset in subsets:
            if data_dir is not None:
                part, source = read_local(_subset_folder(Path(data_dir).expanduser(), subset), split)
            else:
                part, source = self._read_hub_config(split, hub_id or self.hub_id, subset)
            rows += part
            sources.append(source)
        return rows, " + ".join(sources)

    def parse_row(self, row: dict[str, Any], split: str, index: int) -> Question | None:
        choices = row["choices"]
        if not isinstance(choices, dict) or len(choices.get("text", [])) != len(choices.get("label", [])):
            raise TaskError(
                f"arc_challenge {split} row {index + 1}: choices must be {{text: [...], label: [...]}} of equal length"
            )
        gold = str(row["answerKey"] or "").strip()
        if not gold:
            return None
        options = "\n".join(f"({label}) {text}" for label, text in zip(choices["label"], choices["text"]))
        text = f"{str(row['question']).strip()}\n{options}"
        return Question(str(row["id"]), text, gold, tuple(str(label) for label in choices["label"]))

    def gold_stand_in(self, row: dict[str, Any]) -> str:
        labels = row["choices"].get("label") if isinstance(row.get("choices"), dict) else None
        return str(labels[0]) if labels else "A"  # an answer key must be one of the row's labels

    def user_message(self, question: Question) -> str:
        return paper_prompt(INSTRUCTION, question.text)


def _subset_folder(data_dir: Path, subset: str) -> Path:
    """Where a subset's {split}.jsonl files are: data_dir/arc_easy/, ../arc_easy/, or data_dir itself."""
    name = subset.lower().replace("-", "_")
    for folder in (data_dir / name, data_dir.parent / name):
        if folder.is_dir():
            return folder
    if data_dir.name == name or (subset == "ARC-Challenge" and not (data_dir / "arc_challenge").exists()):
        return data_dir  # the ARC-Challenge folder itself (irpo's layout before both sets were used)
    raise TaskError(
        f"task.data_dir {data_dir} has no {name}/ folder (nor one beside it) for {subset}; put {subset}'s "
        f"{{split}}.jsonl there, or set task.train_subsets=[ARC-Challenge] to train on ARC-Challenge alone"
    )
