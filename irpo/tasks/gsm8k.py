"""GSM8K: grade-school word problems, gold = the number after `####` in the worked solution.

Row: {"question": "Natalia sold clips to 48 ...", "answer": "... <<48/2=24>> ... #### 72"}
Prompt: the paper's zero-shot chain-of-thought prompt (Pang et al. 2024, App. B.1), word for word;
the line breaks between its parts are our reading of the paper's boxed listing:

    Your task is to answer the question below. Give step by step reasoning before you answer,
    and when you're ready to answer, please use the format "Final answer: ..."      (one line)
    Question: Natalia sold clips to 48 ...
    Solution:
"""

from __future__ import annotations

import re
from typing import Any

from irpo.tasks import Question, Task, register

INSTRUCTION = (
    "Your task is to answer the question below. Give step by step reasoning before you answer, "
    'and when you\'re ready to answer, please use the format "Final answer: ..."'
)


def paper_prompt(instruction: str, question: str) -> str:
    """The paper's layout: the instruction, then "Question: ..." and "Solution:" on lines of their own."""
    return f"{instruction}\nQuestion: {question}\nSolution:"


@register
class GSM8K(Task):
    name = "gsm8k"
    hub_id = "openai/gsm8k"
    hub_config = "main"
    license = "mit"
    answer_kind = "number"
    answer_phrase = r"final answer\s*:"
    required_fields = ("question", "answer")
    gold_field = "answer"
    has_solutions = True

    def parse_row(self, row: dict[str, Any], split: str, index: int) -> Question | None:
        worked, _, final = str(row["answer"]).rpartition("####")
        gold = final.strip().replace(",", "")
        if not gold:
            return None
        # The gold solution as the prompt asks for it: calculator annotations (<<48/2=24>>) are
        # tooling of the dataset's authors, not reasoning, and "#### N" becomes the answer phrase.
        solution = f"{re.sub(r'<<[^>]*>>', '', worked).strip()}\nFinal answer: {gold}"
        return Question(f"gsm8k/{split}/{index}", str(row["question"]).strip(), gold, solution=solution)

    def user_message(self, question: Question) -> str:
        return paper_prompt(INSTRUCTION, question.text)
