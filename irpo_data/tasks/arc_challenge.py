"""ARC-Challenge: grade-school science, multiple choice; gold = the option label.

Row: {"id": "Mercury_7175875", "question": "An astronomer observes ...",
      "choices": {"text": ["...", ...], "label": ["A", "B", "C", "D"]}, "answerKey": "C"}
Prompt: the paper's zero-shot CoT instruction with the options listed, answer as
"Final answer: X" with X the option's label (labels may be A-E or 1-5).
"""

from __future__ import annotations

from typing import Any

from irpo_data.tasks import Question, Task, TaskError, register
from irpo_data.tasks.gsm8k import INSTRUCTION


@register
class ARCChallenge(Task):
    name = "arc_challenge"
    hub_id = "allenai/ai2_arc"
    hub_config = "ARC-Challenge"
    license = "cc-by-sa-4.0"
    answer_kind = "choice"
    answer_phrase = r"final answer\s*:"
    required_fields = ("id", "question", "choices", "answerKey")

    def parse_row(self, row: dict[str, Any], split: str, index: int) -> Question | None:
        choices = row["choices"]
        if not isinstance(choices, dict) or len(choices.get("text", [])) != len(choices.get("label", [])):
            raise TaskError(f"arc_challenge {split} row {index + 1}: choices must be {{text: [...], label: [...]}} of equal length")
        gold = str(row["answerKey"] or "").strip()
        if not gold:
            return None
        options = "\n".join(f"({label}) {text}" for label, text in zip(choices["label"], choices["text"]))
        text = f"{str(row['question']).strip()}\n{options}"
        return Question(str(row["id"]), text, gold, tuple(str(label) for label in choices["label"]))

    def user_message(self, question: Question) -> str:
        labels = ", ".join(question.labels)
        return (
            f"{INSTRUCTION.replace('...', 'X')}, where X is one of {labels}.\n\nQuestion: {question.text}"
        )
