"""Preference pairs from graded samples: a pure function of the samples table.

    pairs, stats = build_pairs(samples, pairs_per_question=10, max_tokens=512, seed=0)

Steps, as Iterative RPO prescribes: drop generations that were cut off (finish_reason
"length"), are longer than `max_tokens`, or do not state the answer in the requested format;
drop questions left with no correct or no wrong generation; then per question pick
min(K, |correct| x |wrong|) distinct (chosen=correct, rejected=wrong) pairs uniformly at random.

Uniform and reproducible: every (correct, wrong) combination of a question gets a 64-bit key
hashed from (seed, question, chosen index, rejected index), and the K smallest keys win. The
result depends only on the samples' content and the seed, never on row order. One output row:

    question_id="demo/train/3", prompt="<|im_start|>user ...", chosen="... The answer is 28.",
    rejected="... The answer is 11.", gold="28", chosen_answer="28", rejected_answer="11",
    chosen_sample_idx=0, rejected_sample_idx=4
"""

from __future__ import annotations

import numpy as np
import polars as pl

REQUIRED_COLUMNS = (
    "question_id", "sample_idx", "prompt", "gold", "completion", "n_tokens",
    "finish_reason", "answer", "correct", "well_formed",
)  # fmt: skip

# Drop reasons, in the order they are checked: a generation is counted under the first that applies.
DROP_REASONS = ("truncated", "too_long", "not_well_formed")


def build_pairs(
    samples: pl.DataFrame, pairs_per_question: int = 10, max_tokens: int = 512, seed: int = 0
) -> tuple[pl.DataFrame, dict[str, int]]:
    missing = [c for c in REQUIRED_COLUMNS if c not in samples.columns]
    if missing:
        raise ValueError(f"samples table lacks column(s) {', '.join(missing)}; it must have {', '.join(REQUIRED_COLUMNS)}")
    if pairs_per_question < 1:
        raise ValueError(f"pairs_per_question must be at least 1, got {pairs_per_question}")

    reason = (
        pl.when(pl.col("finish_reason") == "length").then(pl.lit("truncated"))
        .when(pl.col("n_tokens") > max_tokens).then(pl.lit("too_long"))
        .when(~pl.col("well_formed").fill_null(False)).then(pl.lit("not_well_formed"))
    )  # fmt: skip
    marked = samples.with_columns(reason.alias("drop_reason"))
    dropped = dict(marked.group_by("drop_reason").len().drop_nulls().iter_rows())
    kept = marked.filter(pl.col("drop_reason").is_null()).with_columns(pl.col("correct").fill_null(False))

    per_question = kept.group_by("question_id").agg(
        pl.col("correct").sum().alias("n_correct"), (~pl.col("correct")).sum().alias("n_wrong")
    )
    n_questions = samples["question_id"].n_unique()
    stats = {
        "generations": samples.height,
        **{f"dropped_{r}": int(dropped.get(r, 0)) for r in DROP_REASONS},
        "generations_kept": kept.height,
        "questions": n_questions,
        "questions_no_usable_generation": n_questions - per_question.height,
        "questions_no_correct": per_question.filter(pl.col("n_correct") == 0).height,
        "questions_no_wrong": per_question.filter(pl.col("n_wrong") == 0).height,
        # Answers whose verification ran out of time (irpo_data.grading): graded wrong, counted here.
        "grading_timeouts": int(samples["grading_timed_out"].sum()) if "grading_timed_out" in samples.columns else 0,
    }

    # Combinations carry only integers; text is joined back for the picked pairs alone.
    kept = kept.with_columns(pl.col("question_id").rank("dense").cast(pl.UInt64).alias("q"))
    chosen = kept.filter(pl.col("correct")).select("q", "sample_idx")
    rejected = kept.filter(~pl.col("correct")).select("q", "sample_idx")
    combos = chosen.join(rejected, on="q", suffix="_rejected")
    combos = combos.with_columns(pl.Series("key", _combo_keys(combos, seed)))
    picked = combos.filter(pl.col("key").rank("ordinal").over("q") <= pairs_per_question)
    text = kept.select("q", "sample_idx", "question_id", "prompt", "gold", "completion", "answer")
    pairs = (
        picked.join(text, on=["q", "sample_idx"])
        .join(text.select("q", "sample_idx", "completion", "answer"),
              left_on=["q", "sample_idx_rejected"], right_on=["q", "sample_idx"], suffix="_rejected")
        .sort("q", "key")
        .select(
            "question_id",
            "prompt",
            pl.col("completion").alias("chosen"),
            pl.col("completion_rejected").alias("rejected"),
            "gold",
            pl.col("answer").alias("chosen_answer"),
            pl.col("answer_rejected").alias("rejected_answer"),
            pl.col("sample_idx").alias("chosen_sample_idx"),
            pl.col("sample_idx_rejected").alias("rejected_sample_idx"),
        )
    )  # fmt: skip
    stats["questions_paired"] = pairs["question_id"].n_unique()
    stats["pairs"] = pairs.height
    stats["train_accuracy"] = float(samples["correct"].fill_null(False).mean() or 0.0)  # type: ignore[arg-type]
    return pairs, stats


def _combo_keys(combos: pl.DataFrame, seed: int) -> np.ndarray:
    """A uniform 64-bit key per (question, chosen, rejected), from splitmix64 of the triple and
    the seed: the K smallest keys of a question are a uniform random K-subset of its
    combinations, and no sort is needed to make the draw independent of row order."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        x = (
            np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
            + combos["q"].to_numpy().astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
            + combos["sample_idx"].to_numpy().astype(np.uint64) * np.uint64(0x94D049BB133111EB)
            + combos["sample_idx_rejected"].to_numpy().astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)
        )
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x
