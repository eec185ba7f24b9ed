"""Pairs as the token ids the engine sampled: prompt masked, overlong pairs dropped.

Input: iteration T's pair dataset (runs/NAME/iter_T/pairs). Its `prompt_token_ids`,
`chosen_token_ids` and `rejected_token_ids` are the ids the engine was given and returned (a
sampled answer that stopped on its end-of-turn token holds it; a gold solution was closed with the
model's end-of-turn token by the build), so the trainer scores exactly the sequences that were
sampled: no text is tokenized again (BPE merges across the prompt/answer boundary, whitespace and
special-token strings in an answer could change the ids). A pair whose prompt plus longer answer
exceeds `max_length` tokens is dropped and counted rather than truncated: a cut answer loses its
final answer, which is what the pair is about.

Row out: {"question_id": "gsm8k/train/3", "prompt_ids": [...], "chosen_ids": [...], "rejected_ids": [...]}
(completion ids only; the question id lets the trainer leave the held-out questions out), and "weight"
where the pairs were labelled by vote (pairs.label vote or mixed).
The SFT objectives train on rows without "rejected_ids": the pairs' winners, or the gold
solutions of `gold_solution_rows`, tokenised the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import torch

from irpo.errors import RunFolderError, SettingError
from irpo.grading import grade
from irpo.prompts import encode_answers

log = logging.getLogger(__name__)


@dataclass
class TokenizedPairs:
    rows: list[dict[str, list[int]]]
    dropped_too_long: int


ID_COLUMNS = ("prompt_token_ids", "chosen_token_ids", "rejected_token_ids")


def tokenize_pairs(dataset, max_length: int) -> TokenizedPairs:
    """The pairs' recorded token ids as training rows (a name kept from when they were tokenized here)."""
    missing = [c for c in ID_COLUMNS if c not in dataset.column_names]
    if missing:
        raise RunFolderError(
            f"the pair dataset has no {', '.join(missing)}: it was built by an irpo that kept only text, and the "
            "trainer scores the ids that were sampled; build the iteration again (move its iter_T folder aside and "
            "rerun: it is sampled again with token ids)"
        )
    prompts = [list(p) for p in dataset["prompt_token_ids"]]
    chosen = [list(c) for c in dataset["chosen_token_ids"]]
    rejected = [list(r) for r in dataset["rejected_token_ids"]]
    rows, dropped = [], 0
    ids = list(dataset["question_id"]) if "question_id" in dataset.column_names else [None] * len(prompts)
    # pairs.label vote or mixed: each pair's weight (the vote margin; 1 for gold), which the loss multiplies.
    weights = list(dataset["weight"]) if "weight" in dataset.column_names else None
    for n, (question_id, p, c, r) in enumerate(zip(ids, prompts, chosen, rejected)):
        if len(p) + max(len(c), len(r)) > max_length:
            dropped += 1
            continue
        row = {"question_id": question_id, "prompt_ids": p, "chosen_ids": c, "rejected_ids": r}
        rows.append(row if weights is None else {**row, "weight": float(weights[n])})
    if dropped:
        log.info("dropped %d of %d pairs longer than train.max_length=%d tokens", dropped, len(prompts), max_length)
    return TokenizedPairs(rows, dropped)


@dataclass
class GoldRows:
    rows: list[dict[str, list[int]]]
    fingerprint: str  # sha256 of the (question id, solution) pairs trained on
    questions: int  # questions with a gold solution
    dropped_ungraded: int  # gold solutions the task's grader does not accept (not trained on)
    dropped_too_long: int


def gold_solution_rows(
    task, questions, prompt_ids: list[list[int]], tokenizer, max_length: int, end_of_turn: int
) -> GoldRows:
    """(prompt, gold worked solution) rows for train.objective=sft_gold: the prompts' ids as the build
    gave them to the engine, the solutions closed by the model's end-of-turn token (as gold.parquet).

    A gold solution the reward's own grader would not score as a correct, well-formed answer is
    left out (a handful of MATH's, e.g. "6, 8\\text{, and }10"): training towards an answer
    the reward calls wrong would compare the objectives on different targets.
    """
    if not task.has_solutions:
        raise SettingError(
            f"task {task.name} has no gold solutions to train on; choose train.objective dpo_nll, dpo or sft_winners"
        )
    kept, ungraded = [], 0
    for question, prompt in zip(questions, prompt_ids):
        if question.solution is None:
            continue
        result = grade(task, question.solution, question.gold)
        if result.correct and result.well_formed:
            kept.append((question, prompt))
        else:
            ungraded += 1
    if not kept:
        raise SettingError(
            f"none of the {len(questions)} questions has a usable gold solution (the data file needs a "
            "solution field); "
            "choose another train.objective"
        )
    digest = hashlib.sha256(json.dumps([[q.question_id, q.solution] for q, _ in kept]).encode()).hexdigest()
    answer_ids = encode_answers(tokenizer, [q.solution for q, _ in kept], end_of_turn)
    rows = [
        {"question_id": q.question_id, "prompt_ids": list(p), "chosen_ids": a} for (q, p), a in zip(kept, answer_ids)
    ]
    fitting = [r for r in rows if len(r["prompt_ids"]) + len(r["chosen_ids"]) <= max_length]
    return GoldRows(fitting, digest[:16], len(kept), ungraded, len(rows) - len(fitting))


def collate(rows: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One batch of 2B sequences: the B chosen ones, then the B rejected ones (right padded).

    Rows without "rejected_ids" (the SFT objectives' rows) give a batch of their B chosen ones.
    """
    pairwise = "rejected_ids" in rows[0]
    sequences = [r["prompt_ids"] + r["chosen_ids"] for r in rows]
    if pairwise:
        sequences += [r["prompt_ids"] + r["rejected_ids"] for r in rows]
    prompt_lens = [len(r["prompt_ids"]) for r in rows] * (2 if pairwise else 1)
    width = max(map(len, sequences))
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    completion = torch.zeros((len(sequences), width), dtype=torch.bool)
    for i, (seq, plen) in enumerate(zip(sequences, prompt_lens)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
        completion[i, plen : len(seq)] = True
    batch = {"input_ids": input_ids, "attention_mask": attention, "completion_mask": completion}
    for key in ("ref_chosen_logps", "ref_rejected_logps", "weight"):
        if key in rows[0]:
            batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.float32)
    return batch
