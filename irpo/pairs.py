"""Preference pairs from graded samples: a pure function of the samples table.

    pairs, stats = build_pairs(samples, PairsConfig(pairs_per_question=10), seed=0, gold=gold_rows)

Steps, as Pang et al. (2024) §2-3 prescribe (each departure is a PairsConfig switch):
1. Drop generations cut off at max_new_tokens or at the end of the context (finish_reason
   "length"), or longer than `max_tokens` (None: no such limit; what overflowed the context is gone).
   With `drop_off_format`, also those that do not state their answer in the prompt's format (irpo's
   old rule; the paper has no such filter).
2. Winners G_w: correct *and* stated in the prompt's format (the paper reads the final answer
   from "Final answer: ..."). Losers G_l: every other finished answer, off-format ones included
   (reward 0; counted as `losers_off_format`).
3. The gold solution joins G_w (`gold_winner`: always, when_none_correct, or never), so that a
   question no sample got right still teaches; it is graded by the reward's grader first.
4. Questions left with no winner or no loser are dropped.
5. K pairs per question (`scheme`):
   - cycle (the paper's): "iterate over G_w and G_l simultaneously", restarting a set when it
     runs out: pair k = (W[k mod |W|], L[k mod |L|]) for k < K over seeded shuffles of both
     sets. Always K pairs; every sample used as evenly as possible; a pair may repeat.
   - distinct: min(K, |W| x |L|) distinct (winner, loser) combinations, uniformly at random.
6. At most `max_pairs` pairs in all (paper: "around 60k"), a seeded uniform subset.

Labels by vote (`label`: vote, or mixed for the questions without gold; beyond the paper: ScPO,
Prasad et al. 2024): a question's answers are counted as maj@k counts them (irpo.majority.vote_labels:
equivalent answers together, no answer never votes, over all its samples); step 2 then takes as
winners the finished, well-formed samples of the most-voted answer and as losers the finished samples
of the least-voted one (the other answers sit out; so do the most-voted's off-format samples, which would
otherwise be paired against their own answer); a question with fewer than two answers, or whose answers
all tie, has no pairs (their weight would be 0); no gold solution joins a question labelled by vote.
Such a table has two more columns: `label` ("gold" or "vote") and `weight` (the vote margin, (votes of
the winner - votes of the loser) / samples; 1 for gold).

With token ids (samples from irpo_data.sampling carry `prompt_token_ids` and `completion_token_ids`,
the gold table `completion_token_ids`), each pair also carries `prompt_token_ids`,
`chosen_token_ids` and `rejected_token_ids`: the very ids the engine was given and returned, which
the trainer scores (no text is tokenized again). The text columns stay TRL's preference format.

Reproducible: every shuffle and draw is keyed by splitmix64 of (seed, the question id's hash,
sample indices), so a question's pairs depend on its own samples and the seed alone, never on row
order or on which other questions are in the table. One output row:

    question_id="demo/train/3", prompt="<|im_start|>user ...", chosen="... The answer is 28.",
    rejected="... The answer is 11.", gold="28", chosen_answer="28", rejected_answer="11",
    chosen_sample_idx=0, rejected_sample_idx=4, chosen_source="sample"   (gold: -1, "gold")
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from irpo.card import PairsConfig
from irpo.majority import vote_labels
from irpo.tasks import Task

REQUIRED_COLUMNS = (
    "question_id",
    "sample_idx",
    "prompt",
    "gold",
    "completion",
    "n_tokens",
    "finish_reason",
    "answer",
    "correct",
    "well_formed",
)
GOLD_COLUMNS = ("question_id", "completion", "n_tokens", "correct", "well_formed")
GOLD_SAMPLE_IDX = -1  # chosen_sample_idx of a gold solution

# Drop reasons, in the order they are checked: a generation is counted under the first that applies.
DROP_REASONS = ("truncated", "too_long", "not_well_formed")


def build_pairs(
    samples: pl.DataFrame,
    config: PairsConfig,
    seed: int = 0,
    gold: pl.DataFrame | None = None,
    task: Task | None = None,
) -> tuple[pl.DataFrame, dict]:
    """(pairs table, counts) from a samples table and, optionally, the questions' gold solutions
    (GOLD_COLUMNS: one graded row per question, as irpo_data.build writes them). `task` judges which
    answers are one answer when questions are labelled by vote (config.label vote or mixed)."""
    _check(samples, REQUIRED_COLUMNS, "samples table")
    if config.pairs_per_question < 1:
        raise ValueError(f"pairs.pairs_per_question must be at least 1, got {config.pairs_per_question}")
    if config.label != "gold" and task is None:
        raise ValueError(f"pairs.label={config.label} counts votes: build_pairs needs the task (task=...)")
    reason = (
        pl.when(pl.col("finish_reason") == "length")
        .then(pl.lit("truncated"))
        .when(pl.col("n_tokens") > _max_tokens(config))
        .then(pl.lit("too_long"))
        .when(pl.lit(config.drop_off_format) & ~pl.col("well_formed").fill_null(False))
        .then(pl.lit("not_well_formed"))
    )
    marked = samples.with_columns(reason.alias("drop_reason"))
    dropped = dict(marked.group_by("drop_reason").len().drop_nulls().iter_rows())
    kept = marked.filter(pl.col("drop_reason").is_null()).with_columns(
        (pl.col("correct").fill_null(False) & pl.col("well_formed").fill_null(False)).alias("winner"),
        pl.lit("sample").alias("source"),
    )
    columns = _pool_columns(samples)
    labels, vote_stats, finished = None, {}, kept
    if config.label != "gold":
        labels, vote_stats = _vote(samples, config, task)
        kept = _label_by_vote(kept, labels)
        vote_stats["generations_set_aside_by_vote"] = finished.height - kept.height  # answers between the two
        if gold is not None:  # a question labelled by vote never has a gold winner
            by_vote = labels.filter(pl.col("label") == "vote")["question_id"].implode()
            gold = gold.filter(~pl.col("question_id").is_in(by_vote))
    golds, gold_stats = _gold_winners(kept, samples, gold, config, columns)
    pool = pl.concat([kept.select(columns), golds.select(columns)]) if golds.height else kept.select(columns)
    pool = pool.join(_question_hashes(samples), on="question_id")

    per_question = pool.group_by("question_id").agg(
        pl.col("winner").sum().alias("n_winners"), (~pl.col("winner")).sum().alias("n_losers")
    )
    n_questions = samples["question_id"].n_unique()
    stats = {
        "generations": samples.height,
        **{f"dropped_{r}": int(dropped.get(r, 0)) for r in DROP_REASONS},
        "generations_kept": finished.height,
        "losers_off_format": kept.filter(~pl.col("winner") & ~pl.col("well_formed").fill_null(False)).height,
        **gold_stats,
        "questions": n_questions,
        "questions_no_usable_generation": n_questions - finished["question_id"].n_unique(),
        "questions_no_correct": per_question.filter(pl.col("n_winners") == 0).height,
        "questions_no_wrong": per_question.filter(pl.col("n_losers") == 0).height,
        # Answers whose verification ran out of time (irpo.grading): graded wrong, counted here.
        "grading_timeouts": int(samples["grading_timed_out"].sum()) if "grading_timed_out" in samples.columns else 0,
        **vote_stats,
    }
    picked = (
        _cycle(pool, per_question, config.pairs_per_question, seed)
        if config.scheme == "cycle"
        else _distinct(pool, config.pairs_per_question, seed)
    )
    picked, over = _cap(picked, config.max_pairs, seed)
    pairs = _with_text(picked, pool, samples)
    if labels is not None:
        pairs = pairs.join(labels.drop("vote_samples"), on="question_id", how="left", maintain_order="left")
        stats["pairs_labelled_by_vote"] = pairs.filter(pl.col("label") == "vote").height
    stats["dropped_over_max_pairs"] = over
    stats["questions_paired"] = pairs["question_id"].n_unique()
    stats["pairs"] = pairs.height
    # Of the samples with a gold answer to judge them by (a question labelled by vote may have none).
    stats["sample_accuracy"] = float(samples["correct"].drop_nulls().mean() or 0.0)  # type: ignore[arg-type]
    if config.label != "gold":
        stats["samples_judged"] = samples["correct"].drop_nulls().len()
    return pairs, stats


def _vote(samples: pl.DataFrame, config: PairsConfig, task: Task) -> tuple[pl.DataFrame, dict]:
    """Each question's label ("gold" or "vote"), its pairs' weight, and which samples the vote made winners or
    losers (`vote_samples`: (sample_idx, won) structs), with counts for the dataset card."""
    ordered = samples.sort("question_id", "sample_idx")
    rows, unanimous, tied, judged, right = [], 0, 0, 0, 0
    for (question_id,), group in ordered.group_by("question_id", maintain_order=True):
        if config.label == "mixed" and (group["gold"][0] or ""):
            rows.append((question_id, "gold", 1.0, []))
            continue
        labels = vote_labels(task, group["answer"].to_list())
        if labels is None or labels.margin == 0:  # fewer than two answers, or all tied: no pair would weigh anything
            unanimous, tied = unanimous + (labels is None), tied + (labels is not None)
            rows.append((question_id, "vote", 0.0, []))
            continue
        index = group["sample_idx"].to_list()
        members = [{"sample_idx": index[i], "won": True} for i in labels.winner.samples]
        members += [{"sample_idx": index[i], "won": False} for i in labels.loser.samples]
        rows.append((question_id, "vote", labels.margin, members))
        verdict = group["correct"][labels.winner.samples[0]]
        if verdict is not None:  # the question has gold all the same: was the vote right?
            judged, right = judged + 1, right + bool(verdict)
    table = pl.DataFrame(
        dict(zip(("question_id", "label", "weight", "vote_samples"), map(list, zip(*rows)))) if rows else None,
        schema={
            "question_id": pl.String,
            "label": pl.String,
            "weight": pl.Float64,
            "vote_samples": pl.List(pl.Struct({"sample_idx": samples.schema["sample_idx"], "won": pl.Boolean})),
        },
    )
    by_vote = table.filter(pl.col("label") == "vote").height
    stats = {
        "questions_labelled_by_vote": by_vote,
        "questions_labelled_by_gold": table.height - by_vote,
        "questions_vote_unanimous": unanimous,
        "questions_vote_tied": tied,  # every answer has as many votes: a margin of 0, so no pairs
        # Of the questions labelled by vote that have a gold answer all the same: how often the vote was right.
        "vote_winner_correct": right,
        "vote_winner_judged": judged,
    }
    return table, stats


def _label_by_vote(kept: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """The kept samples with `winner` set by the vote for the questions labelled by it; the samples of the
    answers in between, and the most-voted's off-format ones, leave the pool."""
    voted = labels.filter(pl.col("label") == "vote")
    members = voted.select("question_id", "vote_samples").explode("vote_samples").unnest("vote_samples").drop_nulls()
    by_gold = kept.filter(~pl.col("question_id").is_in(voted["question_id"].implode()))
    by_vote = (
        kept.join(members, on=["question_id", "sample_idx"], how="inner")
        .filter(~pl.col("won") | pl.col("well_formed").fill_null(False))
        .with_columns(pl.col("won").alias("winner"))
        .drop("won")
    )
    return pl.concat([by_gold, by_vote]).sort("question_id", "sample_idx")


def _max_tokens(config: PairsConfig) -> int:
    return config.max_tokens if config.max_tokens is not None else 2**31 - 1


_POOL = ("question_id", "sample_idx", "completion", "answer", "winner", "source")
IDS = "completion_token_ids"


def _pool_columns(samples: pl.DataFrame) -> tuple[str, ...]:
    """The pool's columns: with the answers' token ids where the samples have them."""
    return (*_POOL, IDS) if IDS in samples.columns else _POOL


def _check(table: pl.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)}; it must have {', '.join(columns)}")


def _gold_winners(
    kept: pl.DataFrame, samples: pl.DataFrame, gold: pl.DataFrame | None, config: PairsConfig, columns: tuple
):
    """The gold rows that join G_w under config.gold_winner, and their counts."""
    empty = pl.DataFrame(schema={c: kept.schema[c] for c in columns})
    if gold is None or config.gold_winner == "never":
        return empty, {"gold_winners": 0, "gold_not_accepted": 0}
    _check(gold, (*GOLD_COLUMNS, *columns[len(_POOL) :]), "gold table")
    gold = gold.filter(pl.col("question_id").is_in(samples["question_id"].unique().implode()))
    accepted = gold.filter(pl.col("correct") & pl.col("well_formed") & (pl.col("n_tokens") <= _max_tokens(config)))
    if config.gold_winner == "when_none_correct":
        answered = kept.filter(pl.col("winner"))["question_id"].unique().implode()
        accepted = accepted.filter(~pl.col("question_id").is_in(answered))
    answers = samples.group_by("question_id").agg(pl.col("gold").first().alias("answer"))
    rows = accepted.join(answers, on="question_id").select(
        "question_id",
        pl.lit(GOLD_SAMPLE_IDX, dtype=kept.schema["sample_idx"]).alias("sample_idx"),
        "completion",
        "answer",
        pl.lit(True).alias("winner"),
        pl.lit("gold").alias("source"),
        *([pl.col(IDS).cast(kept.schema[IDS])] if IDS in columns else []),
    )
    return rows, {
        "gold_winners": rows.height,
        "gold_not_accepted": gold.height
        - gold.filter(pl.col("correct") & pl.col("well_formed") & (pl.col("n_tokens") <= _max_tokens(config))).height,
    }


def _question_hashes(samples: pl.DataFrame) -> pl.DataFrame:
    """A 64-bit hash of each question id: its draws depend on it, not on its rank in the table."""
    ids = samples["question_id"].unique().to_list()
    hashes = [int.from_bytes(hashlib.sha256(str(q).encode()).digest()[:8], "big") for q in ids]
    return pl.DataFrame({"question_id": ids, "qhash": hashes}, schema={"question_id": pl.String, "qhash": pl.UInt64})


def _cycle(pool: pl.DataFrame, per_question: pl.DataFrame, k: int, seed: int) -> pl.DataFrame:
    """Pair k = (W[k mod |W|], L[k mod |L|]), k < K, over a seeded shuffle of each set."""
    ranked = pool.with_columns(pl.Series("key", _mix(seed, pool["qhash"], pool["sample_idx"])))
    ranked = ranked.with_columns(
        (pl.col("key").rank("ordinal").over("question_id", "winner").cast(pl.Int64) - 1).alias("position")
    )
    rounds = (
        per_question.filter((pl.col("n_winners") > 0) & (pl.col("n_losers") > 0))
        .with_columns(pl.int_ranges(0, k).alias("k"))
        .explode("k")
        .with_columns(
            pl.col("k").cast(pl.Int64),
            (pl.col("k").cast(pl.Int64) % pl.col("n_winners").cast(pl.Int64)).alias("w"),
            (pl.col("k").cast(pl.Int64) % pl.col("n_losers").cast(pl.Int64)).alias("l"),
        )
    )
    winners = ranked.filter(pl.col("winner")).select(
        "question_id", "qhash", pl.col("position").alias("w"), "sample_idx"
    )
    losers = ranked.filter(~pl.col("winner")).select("question_id", pl.col("position").alias("l"), "sample_idx")
    return (
        rounds.join(winners, on=["question_id", "w"])
        .join(losers, on=["question_id", "l"], suffix="_rejected")
        .select("question_id", "qhash", "sample_idx", "sample_idx_rejected", pl.col("k").alias("order"))
    )


def _distinct(pool: pl.DataFrame, k: int, seed: int) -> pl.DataFrame:
    """The K combinations with the smallest keys: a uniform random K-subset of W x L."""
    winners = pool.filter(pl.col("winner")).select("question_id", "qhash", "sample_idx")
    losers = pool.filter(~pl.col("winner")).select("question_id", "sample_idx")
    combos = winners.join(losers, on="question_id", suffix="_rejected")
    combos = combos.with_columns(
        pl.Series("key", _mix(seed, combos["qhash"], combos["sample_idx"], combos["sample_idx_rejected"]))
    )
    combos = combos.with_columns((pl.col("key").rank("ordinal").over("question_id") - 1).cast(pl.Int64).alias("order"))
    return combos.filter(pl.col("order") < k).select(
        "question_id", "qhash", "sample_idx", "sample_idx_rejected", "order"
    )


def _cap(picked: pl.DataFrame, max_pairs: int | None, seed: int) -> tuple[pl.DataFrame, int]:
    """At most `max_pairs` pairs: those with the smallest keys, a uniform random subset."""
    if max_pairs is None or picked.height <= max_pairs:
        return picked, 0
    keys = _mix(seed ^ 0x5EED, picked["qhash"], picked["order"], picked["sample_idx"], picked["sample_idx_rejected"])
    kept = picked.with_columns(pl.Series("key", keys)).sort("key").head(max_pairs).drop("key")
    return kept, picked.height - max_pairs


def _with_text(picked: pl.DataFrame, pool: pl.DataFrame, samples: pl.DataFrame) -> pl.DataFrame:
    """Join the texts (and token ids) back onto the picked (winner, loser) indices; sorted by question, then draw."""
    ids = IDS in pool.columns
    answer = ["question_id", "sample_idx", "completion", "answer", *([IDS] if ids else [])]
    text = pool.select(*answer, "source")
    prompts = samples.group_by("question_id").agg(
        pl.col("prompt").first(), pl.col("gold").first(), *([pl.col("prompt_token_ids").first()] if ids else [])
    )
    table = (
        picked.join(text, on=["question_id", "sample_idx"])
        .join(
            text.select(*answer),
            left_on=["question_id", "sample_idx_rejected"],
            right_on=["question_id", "sample_idx"],
            suffix="_rejected",
        )
        .join(prompts, on="question_id")
        .sort("question_id", "order")
    )
    return table.select(
        "question_id",
        "prompt",
        pl.col("completion").alias("chosen"),
        pl.col("completion_rejected").alias("rejected"),
        "gold",
        pl.col("answer").alias("chosen_answer"),
        pl.col("answer_rejected").alias("rejected_answer"),
        pl.col("sample_idx").alias("chosen_sample_idx"),
        pl.col("sample_idx_rejected").alias("rejected_sample_idx"),
        pl.col("source").alias("chosen_source"),
        *(
            [
                "prompt_token_ids",
                pl.col(IDS).alias("chosen_token_ids"),
                pl.col(f"{IDS}_rejected").alias("rejected_token_ids"),
            ]
            if ids
            else []
        ),
    )


def _mix(seed: int, *columns: pl.Series) -> np.ndarray:
    """A uniform 64-bit key per row from splitmix64 of the seed and the row's integers."""
    multipliers = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93, 0xA0761D6478BD642F)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        x = np.full(
            len(columns[0]), np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64
        )
        for column, multiplier in zip(columns, multipliers):
            values = column.to_numpy()
            values = values if values.dtype == np.uint64 else values.astype(np.int64).view(np.uint64)  # -1 wraps: fine
            x += values * np.uint64(multiplier)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def fingerprint(pairs: pl.DataFrame) -> str:
    """sha256 of the pair table's content. datasets' own `_fingerprint` changes across a
    save_to_disk/load_from_disk round trip, so the manifest hashes the rows itself.

    The scalar columns as CSV (which is all a table held before the token-id columns, so earlier
    fingerprints stay valid), then each list column (CSV has no lists): its name, each row's length
    and the ids, as 64-bit integers."""
    lists = [name for name, dtype in pairs.schema.items() if isinstance(dtype, pl.List)]
    digest = hashlib.sha256(pairs.drop(lists).write_csv().encode())
    for name in lists:
        column = pairs[name]
        digest.update(name.encode())
        digest.update(column.list.len().fill_null(-1).to_numpy().astype("<i8").tobytes())
        digest.update(column.explode().drop_nulls().to_numpy().astype("<i8").tobytes())
    return digest.hexdigest()


EXAMPLE_COLUMNS = ("question_id", "prompt", "gold", "chosen", "chosen_answer", "rejected", "rejected_answer")


def example_pairs(pairs: pl.DataFrame, k: int = 4) -> list[dict]:
    """k pairs to look at (the report, the trackers): one per question, the questions ranked by a hash of
    their id, so the same run shows the same pairs every time and a question's place does not depend on
    which others were paired."""
    if pairs.is_empty():
        return []
    first = pairs.unique("question_id", keep="first", maintain_order=True)
    ranked = sorted(first.iter_rows(named=True), key=lambda row: hashlib.sha256(row["question_id"].encode()).digest())
    return [{c: row.get(c) for c in EXAMPLE_COLUMNS} for row in ranked[:k]]
