"""Accuracy of the demo model on the built-in demo task: the check that the demo can give pairs.

    python bench/demo_accuracy.py [--split test] [--max-new-tokens 160]

Greedy accuracy on the split, then 8 samples at T=0.8 on 100 training questions: how many
samples are right and how many questions have both a right and a wrong well-formed sample
(only those give pairs). The demo card needs greedy accuracy between 15% and 70%.
"""

from __future__ import annotations

import argparse
import json

from transformers import AutoTokenizer

from irpo.card import ModelConfig, SamplingConfig
from irpo.engines import SamplingParams, VLLMEngine, question_seed
from irpo.grading import grade
from irpo.hardware import resolve_dtype
from irpo.models import resolve_model
from irpo.prompts import Prompts
from irpo.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    args = parser.parse_args()
    task = get_task("demo")
    model = resolve_model(ModelConfig().base)
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    engine = VLLMEngine(model.path, resolve_dtype("auto"), 0, SamplingConfig())

    questions = task.load(args.split).questions
    prompts = Prompts.of(task, questions, tokenizer, "auto").ids
    greedy = engine.generate(prompts, SamplingParams(1, 0.0, 1.0, args.max_new_tokens, 0), [0] * len(prompts))
    grades = [grade(task, out[0].text, q.gold) for out, q in zip(greedy, questions)]
    accuracy = sum(g.correct for g in grades) / len(grades)

    train = task.load("train").questions[:100]
    sampled = engine.generate(
        Prompts.of(task, train, tokenizer, "auto").ids,
        SamplingParams(8, 0.8, 1.0, args.max_new_tokens, 0),
        [question_seed(0, q.question_id) for q in train],
    )
    usable = [[grade(task, g.text, q.gold) for g in out if g.finish_reason == "stop"] for out, q in zip(sampled, train)]
    mixed = sum(
        any(g.correct and g.well_formed for g in gs) and any(not g.correct and g.well_formed for g in gs)
        for gs in usable
    )
    sample_accuracy = sum(grade(task, g.text, q.gold).correct for out, q in zip(sampled, train) for g in out) / 800
    print(
        f"greedy accuracy on {len(questions)} {args.split} questions: {accuracy:.1%} "
        f"(well formed {sum(g.well_formed for g in grades) / len(grades):.0%}, hit the cap "
        f"{sum(o[0].finish_reason == 'length' for o in greedy)})"
    )
    print(
        f"T=0.8 x 8 on 100 train questions: {sample_accuracy:.1%} of samples right, {mixed} questions with "
        "both a right and a wrong answer"
    )
    print(f"demo card range 15-70%: {'met' if 0.15 <= accuracy <= 0.70 else 'MISSED'}")
    print(
        json.dumps(
            {
                "bench": "demo_accuracy",
                "greedy_accuracy": round(accuracy, 4),
                "sample_accuracy": round(sample_accuracy, 4),
                "mixed_questions": mixed,
            }
        )
    )


if __name__ == "__main__":
    main()
