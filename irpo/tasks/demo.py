"""The embedded demo task: one-step word problems small enough for SmolLM2-135M.

GSM8K is ~1% for the demo model, which leaves no (correct, wrong) pairs to learn from. These
problems (one addition or one multiplication, numbers 2-20) sit where it is right some of the
time, so sampling yields both winners and losers. Rows are generated from a fixed seed per
split, so every install sees the same questions; nothing is downloaded.

Row: {"question": "Tom has 4 boxes with 7 pencils in each. How many pencils ...?", "answer": "28",
      "solution": "Tom has 4 boxes with 7 pencils in each, so 4 * 7 = 28. The answer is 28."}
"""

from __future__ import annotations

import random
from typing import Any

from irpo.tasks import Question, Task, TaskError

NAMES = ["Tom", "Anna", "Liam", "Mia", "Noah", "Emma", "Omar", "Sara", "Ben", "Lucy", "Ravi", "Zoe"]
ITEMS = ["apples", "pencils", "marbles", "stickers", "books", "cookies", "coins", "shells", "cards", "toys"]
CONTAINERS = ["boxes", "bags", "jars", "baskets", "bowls", "packs"]

SPLIT_SIZES = {"train": 1200, "test": 300}  # questions per split
SPLIT_SEEDS = {"train": 1, "test": 2}


def _problem(rng: random.Random) -> tuple[str, int, str]:
    """(question, answer, worked solution); the solution draws nothing from `rng`."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    if rng.random() < 0.5:
        question = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        return (
            question,
            a + b,
            f"{name} has {a} {item} and gets {b} more, so {a} + {b} = {a + b}. The answer is {a + b}.",
        )
    box = rng.choice(CONTAINERS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    question = f"{name} has {a} {box} with {b} {item} in each. How many {item} does {name} have in total?"
    return (
        question,
        a * b,
        f"{name} has {a} {box} with {b} {item} in each, so {a} * {b} = {a * b}. The answer is {a * b}.",
    )


def generate_rows(split: str) -> list[dict[str, str]]:
    """The split's rows, identical on every machine; train and test never share a question."""
    if split not in SPLIT_SIZES:
        raise TaskError(f"the demo task has splits {', '.join(SPLIT_SIZES)}, not {split!r}")
    # Test questions are drawn after removing every training question.
    taken = {row["question"] for row in generate_rows("train")} if split == "test" else set()
    rng, rows = random.Random(SPLIT_SEEDS[split]), []
    while len(rows) < SPLIT_SIZES[split]:
        question, answer, solution = _problem(rng)
        if question not in taken:
            taken.add(question)
            rows.append({"question": question, "answer": str(answer), "solution": solution})
    return rows


class Demo(Task):
    name = "demo"
    hub_id = ""  # built in: rows are generated, never downloaded
    license = "apache-2.0"
    answer_kind = "number"
    answer_phrase = r"the answer is"
    required_fields = ("question", "answer")
    gold_field = "answer"
    has_solutions = True  # generated with each question; a local file may add a `solution` field
    paper_results = ()  # the paper has no such benchmark

    def read_rows(self, split: str, data_dir: str | None, hub_id: str | None) -> tuple[list[Any], str]:
        if data_dir is not None or hub_id:
            return super().read_rows(split, data_dir, hub_id)
        return generate_rows(split), f"irpo built-in demo task, split {split}"

    def parse_row(self, row: dict[str, Any], split: str, index: int) -> Question | None:
        gold = str(row["answer"]).strip()
        if not gold:
            return None
        solution = str(row.get("solution") or "").strip() or None
        return Question(f"demo/{split}/{index}", str(row["question"]).strip(), gold, solution=solution)

    def user_message(self, question: Question) -> str:
        return (
            'Solve the problem step by step. Then finish with "The answer is N." where N is a number.'
            f"\n\nQuestion: {question.text}"
        )
