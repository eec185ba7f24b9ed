"""MATH: competition problems; gold = the last \\boxed{} content of the solution.

Row: {"problem": "Find the domain ...", "solution": "...", "answer": "[2,5)",
      "subject": "Algebra", "level": 5, "unique_id": "train/algebra/1.json"}

Options (card `task.split_scheme`, `task.prompt`):
- split scheme `paper` (default): the original MATH split of Hendrycks et al. (2021) that the paper uses,
  7,500 train / 5,000 test problems, told apart by `unique_id` ("train/..." or "test/...").
  Offline, ../shared/data/math holds all 12,500 (PRM800K's train.jsonl has the 7,500 plus 4,500 of
  the test problems; test.jsonl the other 500): the rows of both files are pooled and split by id.
  Online: `EleutherAI/hendrycks_math`, all seven subjects.
- split scheme `prm800k`: PRM800K's 12,000 train / MATH-500 test (`HuggingFaceH4/MATH-500` online). Its
  training problems hold 4,500 of the paper's test problems: its numbers are not the paper's.
- prompt `paper` (default): App. B.1, word for word, with four fixed training problems (below):

    Your task is to answer the last question below. Give step by step reasoning before you
    answer, and when you're ready to answer, please wrap your answer in \\boxed, and conclude using
    the format "Final answer: ..."                                                   (one line)

    Question: <exemplar>
    Solution: <its solution>
    Final answer: <its answer>
    ... (four exemplars)

    Question: <the problem>
    Solution:
- prompt `minerva`: the 4-shot Minerva prompt, answer as "Final Answer: The final answer is X.
  I hope it is correct."
The four exemplars are never training questions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irpo.tasks import PaperResult, Question, Task, TaskError, read_local

# The four exemplars of both prompts: Minerva's (Lewkowycz et al. 2022), MATH training problems
# train/algebra/943, train/precalculus/372, train/algebra/256 and train/algebra/1951 (in this
# order). The paper does not print its four; these are fixed, documented, and never sampled.
FEW_SHOT_IDS = (
    "train/algebra/943.json",
    "train/precalculus/372.json",
    "train/algebra/256.json",
    "train/algebra/1951.json",
)
FEW_SHOT = [
    (
        r"Find the domain of the expression $\frac{\sqrt{x-2}}{\sqrt{5-x}}$.",
        r"The expressions inside each square root must be non-negative. Therefore, $x-2 \ge 0$, so $x\ge2$, "
        r"and $5 - x \ge 0$, so $x \le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, which "
        r"gives $x<5$. Therefore, the domain of the expression is $\boxed{[2,5)}$.",
        r"[2,5)",
    ),
    (
        r"If $\det \mathbf{A} = 2$ and $\det \mathbf{B} = 12,$ then find $\det (\mathbf{A} \mathbf{B}).$",
        r"We have that $\det (\mathbf{A} \mathbf{B}) = (\det \mathbf{A})(\det \mathbf{B}) = (2)(12) = \boxed{24}.$",
        r"24",
    ),
    (
        "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, "
        "how many times must Terrell lift them in order to lift the same total weight?",
        r"If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\cdot 12\cdot20=480$ pounds of "
        r"weight. If he lifts two 15-pound weights instead for $n$ times, he will lift a total of "
        r"$2\cdot15\cdot n=30n$ pounds of weight. Equating this to 480 pounds, we can solve for $n$: "
        r"\begin{align*} 30n&=480\\ \Rightarrow\qquad n&=480/30=\boxed{16} \end{align*}",
        r"16",
    ),
    (
        r"If the system of equations \begin{align*} 6x-4y&=a,\\ 6y-9x &=b. \end{align*} has a solution "
        r"$(x, y)$ where $x$ and $y$ are both nonzero, find $\frac{a}{b},$ assuming $b$ is nonzero.",
        r"If we multiply the first equation by $-\frac{3}{2}$, we obtain $$6y-9x=-\frac{3}{2}a.$$ Since we "
        r"also know that $6y-9x=b$, we have $$-\frac{3}{2}a=b\Rightarrow\frac{a}{b}=\boxed{-\frac{2}{3}}.$$",
        r"-\frac{2}{3}",
    ),
]


PAPER_INSTRUCTION = (
    "Your task is to answer the last question below. Give step by step reasoning before you answer, "
    "and when you're ready to answer, please wrap your answer in \\boxed, and conclude using the format "
    '"Final answer: ..."'
)
PAPER_SHOTS = "\n\n".join(f"Question: {p}\nSolution: {s}\nFinal answer: {a}" for p, s, a in FEW_SHOT)
MINERVA_SHOTS = "\n\n".join(
    f"Problem:\n{p}\n\nSolution:\n{s}\nFinal Answer: The final answer is ${a}$. I hope it is correct."
    for p, s, a in FEW_SHOT
)
SPLITS = ("paper", "prm800k")
PROMPTS = ("paper", "minerva")
HUB_IDS = {"paper": "EleutherAI/hendrycks_math", "prm800k": "HuggingFaceH4/MATH-500"}
SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)


@dataclass(frozen=True)
class MATH(Task):
    name = "math"
    hub_id = HUB_IDS["paper"]
    license = "mit"
    answer_kind = "latex"
    required_fields = ("problem", "answer")
    gold_field = "answer"
    has_solutions = True  # in the `solution` field, when the file has it (MATH-500 and PRM800K do)
    # Table 2 of the paper (NeurIPS 2024 version).
    paper_results = (
        PaperResult("4-shot CoT", 12.5, 0),
        PaperResult("4-shot CoT, maj@32", 18.8, metric="maj@32"),
        *(PaperResult(f"iterative RPO, iteration {t}", a, t, "dpo_nll") for t, a in enumerate([17.7, 19.9, 20.8], 1)),
        PaperResult("iterative RPO, iteration 3, maj@32", 29.1, metric="maj@32"),
        PaperResult("SFT on chosen sequences", 16.8, 1, "sft_winners"),
        PaperResult("DPO initialized from Llama-2-70b-chat", 12.4, 1, "dpo"),
        PaperResult("DPO initialized from SFT on chosen sequences", 10.5, 1, "dpo_from_sft"),
    )
    # How MATH's problems are split into train and test (a split, as everywhere else, is one of
    # them: task.train_split, task.test_split).
    split_scheme: str = "paper"
    prompt: str = "paper"

    def __post_init__(self):
        if self.split_scheme not in SPLITS:
            raise TaskError(
                f"task.split_scheme has {self.split_scheme!r}; MATH's split schemes are {', '.join(SPLITS)} "
                "(paper: the original 7,500 / 5,000)"
            )
        if self.prompt not in PROMPTS:
            raise TaskError(f"task.prompt has {self.prompt!r}; MATH's prompts are {', '.join(PROMPTS)}")

    @property
    def run_on_markers(self) -> tuple[str, ...]:  # the next exemplar of the prompt's own layout
        return ("\nQuestion:",) if self.prompt == "paper" else ("\nProblem:",)

    @property
    def answer_phrase(self) -> str:  # what the prompt asks the answer to be stated with
        return r"final answer\s*:" if self.prompt == "paper" else r"final answer is|\\boxed\s*\{"

    def read_rows(self, split: str, data_dir: str | None, hub_id: str | None) -> tuple[list[Any], str]:
        if self.split_scheme == "prm800k":
            if data_dir is None and not hub_id and split != "test":
                raise TaskError(
                    "the PRM800K train split is not on the Hub; set task.data_dir to a folder with train.jsonl"
                )
            return super().read_rows(split, data_dir, hub_id or HUB_IDS["prm800k"])
        if data_dir is not None:
            return _paper_split_from_files(Path(data_dir).expanduser(), split)
        if hub_id:
            return super().read_rows(split, None, hub_id)
        rows, sources = [], []
        for subject in SUBJECTS:
            part, source = self._read_hub_config(split, HUB_IDS["paper"], subject)
            rows += [
                {**r, "unique_id": f"{split}/{subject}/{i}.json", "answer": last_boxed(r["solution"])}
                for i, r in enumerate(part)
            ]
            sources.append(source)
        return rows, f"hf://{HUB_IDS['paper']} (7 subjects) split {split}"

    def parse_row(self, row: dict[str, Any], split: str, index: int) -> Question | None:
        # A few boxed answers end in the sentence's punctuation ("\\boxed{-\\frac{5}{3}.}"), which no
        # answer should have to repeat: the grader strips it from answers, so it goes from the gold too.
        gold = str(row["answer"] or "").strip().rstrip(".,; ").strip()
        question_id = str(row.get("unique_id") or f"math/{split}/{index}")
        if not gold or question_id in FEW_SHOT_IDS:  # the exemplars sit in every prompt: never a question
            return None
        worked = str(row.get("solution") or "").strip()
        return Question(
            question_id, str(row["problem"]).strip(), gold, solution=self._solution(worked, gold) if worked else None
        )

    def _solution(self, worked: str, gold: str) -> str:
        """The gold worked solution closed the way the prompt asks a sample to close."""
        if self.prompt == "paper":
            return f"{worked}\nFinal answer: {gold}"
        return f"{worked}\nFinal Answer: The final answer is ${gold}$. I hope it is correct."

    def user_message(self, question: Question) -> str:
        if self.prompt == "paper":
            return f"{PAPER_INSTRUCTION}\n\n{PAPER_SHOTS}\n\nQuestion: {question.text}\nSolution:"
        return f"{MINERVA_SHOTS}\n\nProblem:\n{question.text}\n\nSolution:"


def _paper_split_from_files(folder: Path, split: str) -> tuple[list[dict], str]:
    """Split `split` of the original MATH split, from every {train,test}.jsonl row by its unique_id."""
    rows, seen, sources = [], set(), []
    for name in ("train", "test"):
        if not any((folder / f"{name}.{ext}").is_file() for ext in ("jsonl", "parquet")):
            continue
        part, source = read_local(folder, name)
        sources.append(source)
        for number, row in enumerate(part, 1):
            uid = row.get("unique_id") if isinstance(row, dict) else None
            if not uid:
                raise TaskError(
                    f"{source} row {number} has no unique_id, which the paper split needs to tell MATH's "
                    "train and test "
                    "problems apart; add it, or set task.split_scheme=prm800k to use the files' own split"
                )
            if uid.startswith(f"{split}/") and uid not in seen:
                seen.add(uid)
                rows.append(row)
    if not sources:
        raise TaskError(f"no train.jsonl or test.jsonl in {folder}; check task.data_dir")
    return rows, f"{' + '.join(sources)} (rows with unique_id {split}/...)"


def last_boxed(solution: str) -> str:
    """Content of the last \\boxed{...} of a MATH solution (its final answer), or ""."""
    start = solution.rfind("\\boxed")
    if start < 0:
        return ""
    brace = solution.find("{", start)
    if brace < 0:
        match = re.match(r"\\boxed\s+(\S+)", solution[start:])  # "\\boxed 2", as two MATH solutions write it
        return match.group(1) if match else ""
    depth = 0
    for i in range(brace, len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[i], 0)
        if depth == 0:
            return solution[brace + 1 : i].strip()
    return ""
