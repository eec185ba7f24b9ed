"""What a card's numbers may be, checked when the card loads: every number's range, and the run name.
(A one-word choice is its key's `Literal` type in irpo.card.) The ranges are a table a newcomer can read.

    load_card("demo", ["sampling.top_p=-3"])
    -> CardError: card .../cards/demo.yaml: sampling.top_p must be above 0, got -3.0

Why at load: a value that cannot work (a NaN learning rate, `train.select_every=0`, `eval.limit=0`)
would otherwise pass and fail hours later, after sampling and training; a value that silently
changes the work (`task.max_questions=-1` sliced off one question instead of keeping 32) is worse.
tests/test_hostile.py checks that every number of the card has a range here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# A run name is one folder name under --runs-dir: letters, digits, ".", "_", "-", not starting with
# a dot (hidden, and ".." walks out of the folder), at most 100 characters.
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
MAX_SHOWN_CHARS = 200  # of any value in an error message: a 6 MB override is named, not printed


def shown(value) -> str:
    """repr(value), cut to MAX_SHOWN_CHARS with how much was left out."""
    text = repr(value)
    if len(text) <= MAX_SHOWN_CHARS:
        return text
    return f"{text[:MAX_SHOWN_CHARS]}... ({len(text):,} characters)"


@dataclass(frozen=True)
class Range:
    """lowest <= value <= highest (None: no bound); `above` makes the lower bound exclusive."""

    lowest: float | None = None
    highest: float | None = None
    above: bool = False

    def problem(self, key: str, value) -> str | None:
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"{key} must be a finite number, got {value}"
        low_ok = self.lowest is None or (value > self.lowest if self.above else value >= self.lowest)
        if not low_ok:
            return f"{key} must be {'above' if self.above else 'at least'} {_number(self.lowest)}, got {shown(value)}"
        if self.highest is not None and value > self.highest:
            return f"{key} must be at most {_number(self.highest)}, got {shown(value)}"
        return None


def _number(bound: float) -> str:
    return f"{int(bound):,}" if float(bound).is_integer() else f"{bound:g}"


COUNT = Range(1, 1e9)  # how many of something: at least one (a billion is a typo, not a plan)
NONE_OK = Range(0, 1e9)  # zero is a real choice (no held-out questions, no probe pairs)
POSITIVE = Range(0, None, above=True)

# Every number a card holds. None for an optional key means "no limit" and is always allowed.
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1),  # vLLM and torch take 32-bit seeds
    "iterations": COUNT,
    "task.max_questions": COUNT,
    "task.held_out": NONE_OK,
    "sampling.num_samples": COUNT,
    "sampling.temperatures": Range(0, 100),  # each one; 0 is greedy
    "sampling.top_p": Range(0, 1, above=True),
    "sampling.max_new_tokens": COUNT,
    "sampling.questions_per_shard": COUNT,
    "sampling.batch_size": COUNT,
    "sampling.max_model_len": Range(16, 1e9),
    "sampling.resample_every": COUNT,  # null: offline, the paper's
    "pairs.pairs_per_question": COUNT,
    "pairs.max_tokens": COUNT,
    "pairs.max_pairs": COUNT,
    "train.beta": POSITIVE,
    "train.alpha": Range(0, None),
    "train.learning_rate": Range(0, 1, above=True),
    "train.batch_size": COUNT,
    "train.max_steps": COUNT,
    "train.select_every": COUNT,
    "train.save_every": COUNT,
    "train.max_length": Range(2, 1e9),  # a prompt token and an answer token at least
    "train.gradient_accumulation_steps": COUNT,
    "train.warmup_steps": NONE_OK,
    "train.select_questions": COUNT,
    "train.probe_pairs": NONE_OK,
    "train.probe_every": COUNT,
    "train.lora_r": COUNT,
    "train.lora_alpha": COUNT,
    "eval.maj_k": COUNT,
    "eval.temperature": Range(0, 100),
    "eval.max_new_tokens": COUNT,
    "eval.limit": COUNT,
    "resources.kv_cache_gb": COUNT,
    "resources.gpu_memory_utilization": Range(0, 1, above=True),
    "resources.tensor_parallel_size": COUNT,
    "resources.pipeline_parallel_size": COUNT,
    "resources.ray_engines": COUNT,
    "resources.ray_cpus_per_engine": POSITIVE,
    "resources.ray_engine_restarts": NONE_OK,
}


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a run folder's name, or None."""
    if RUN_NAME.fullmatch(name) and name not in (".", ".."):
        return None
    return (
        f"name {shown(name)} is not a run name: use one folder name of letters, digits, '.', '_' and '-', "
        "not starting with a dot, at most 100 characters (e.g. name=gsm8k-seed1)"
    )


def range_problems(flat: dict) -> list[str]:
    """A message per number outside its range (`flat`: the card's dotted keys and values)."""
    problems = []
    for key, limits in RANGES.items():
        values = flat[key] if isinstance(flat[key], list) else [flat[key]]
        problems += [p for v in values if (p := limits.problem(key, v))]
    return problems
