"""MATH (the PRM800K split: 12,000 train, MATH-500 test); gold = the last \\boxed{} content.

Row: {"problem": "Find the domain ...", "solution": "...", "answer": "[2,5)",
      "subject": "Algebra", "level": 5, "unique_id": "train/algebra/1.json"}
Prompt: the 4-shot Minerva prompt (Lewkowycz et al., 2022) the paper uses for MATH, answer
as "Final Answer: The final answer is X. I hope it is correct."

The Hub has MATH-500 (`HuggingFaceH4/MATH-500`, test only) but no official copy of the 12k
train split, so the card points `task.data_dir` at local files or sets `task.hub_id`.
"""

from __future__ import annotations

from typing import Any

from irpo_data.tasks import Question, Task, register

# The four Minerva exemplars: MATH training problems with worked solutions ending in the
# fixed answer sentence. Written as the model should continue them.
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


def _shot(problem: str, solution: str, answer: str) -> str:
    return (
        f"Problem:\n{problem}\n\nSolution:\n{solution}\n"
        f"Final Answer: The final answer is ${answer}$. I hope it is correct."
    )


FEW_SHOT_PROMPT = "\n\n".join(_shot(*shot) for shot in FEW_SHOT)


@register
class MATH(Task):
    name = "math"
    hub_id = "HuggingFaceH4/MATH-500"
    license = "mit"
    answer_kind = "latex"
    answer_phrase = r"final answer is|\\boxed\s*\{"
    required_fields = ("problem", "answer")
    has_solutions = True  # in the `solution` field, when the file has it (MATH-500 and PRM800K do)

    def parse_row(self, row: dict[str, Any], split: str, index: int) -> Question | None:
        gold = str(row["answer"] or "").strip()
        if not gold:
            return None
        question_id = str(row.get("unique_id") or f"math/{split}/{index}")
        worked = str(row.get("solution") or "").strip()
        # Closed by the few-shot exemplars' answer sentence, which is what a sample must end with.
        solution = f"{worked}\nFinal Answer: The final answer is ${gold}$. I hope it is correct." if worked else None
        return Question(question_id, str(row["problem"]).strip(), gold, solution=solution)

    def user_message(self, question: Question) -> str:
        return f"{FEW_SHOT_PROMPT}\n\nProblem:\n{question.text}\n\nSolution:"
