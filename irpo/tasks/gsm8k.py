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

from irpo.tasks import PaperResult, Question, Task

INSTRUCTION = (
    "Your task is to answer the question below. Give step by step reasoning before you answer, "
    'and when you\'re ready to answer, please use the format "Final answer: ..."'
)


def paper_prompt(instruction: str, question: str) -> str:
    """The paper's layout: the instruction, then "Question: ..." and "Solution:" on lines of their own."""
    return f"{instruction}\nQuestion: {question}\nSolution:"


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
    # Table 1 of the paper (NeurIPS 2024 version).
    paper_results = (
        PaperResult("zero-shot CoT", 55.6, 0),
        PaperResult("zero-shot CoT, maj@32", 70.7, metric="maj@32"),
        *(
            PaperResult(f"iterative RPO, iteration {t}", a, t, "dpo_nll")
            for t, a in enumerate([73.1, 78.0, 81.1, 81.6], 1)
        ),
        PaperResult("iterative RPO, iteration 3, maj@32", 88.2, metric="maj@32"),
        PaperResult("iterative RPO, iteration 4, maj@32", 88.7, metric="maj@32"),
        PaperResult("SFT on gold CoT examples", 63.5, 1, "sft_gold"),
        PaperResult("STaR, 1 iteration (SFT on the winners)", 65.2, 1, "sft_winners"),
        PaperResult("DPO initialized from Llama-2-70b-chat", 61.8, 1, "dpo"),
        PaperResult("DPO initialized from SFT on iteration 1's winners", 60.3, 1, "dpo_from_sft"),
        # §3.1: more pairs are not what helps; the iterations are.
        PaperResult("STaR, 1 iteration, twice the data", 66.9, 1, "sft_winners_2x"),
        PaperResult("iterative RPO, 1 iteration, twice the data", 74.8, 1, "dpo_nll_2x"),
        PaperResult("iterative RPO, 1 iteration, initialised from SFT on the winners", 73.1, 1, "dpo_nll_from_sft"),
    )

    def parse_row(self, row: dict[str, Any], split: str, index: int) -> Question | None:
        worked, _, final = str(row["answer"]).rpartition("####")
        gold = final.strip().replace(",", "")
        if not gold:
            return None
        # The gold solution as the prompt asks for it: calculator annotations (<<48/2=24>>) are
        # tooling of the dataset's authors, not reasoning, and "#### N" becomes the answer phrase.
        solution = f"{re.sub(r'<<[^>]*>>', '', worked).strip()}\nFinal answer: {gold}"
        return Question(f"gsm8k/{split}/{index}", str(row["question"]).strip(), gold, solution=solution)

    def gold_stand_in(self, row: dict[str, Any]) -> str:
        return "#### 0"  # parse_row reads the gold after ####

    def user_message(self, question: Question) -> str:
        return paper_prompt(INSTRUCTION, question.text)
