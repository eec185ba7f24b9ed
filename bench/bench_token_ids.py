"""What the token-id columns cost on disk: one MATH sample shard with and without them.

    python bench/bench_token_ids.py [--questions 64] [--samples 20]

The shard a MATH build writes: 64 questions (sampling.questions_per_shard's default) x 20 answers,
each row repeating its question's 4-shot prompt (text and ids). The prompts are the real ones of
../shared/data/math (the paper's prompt in the demo model's chat template); the answers are random
token ids of 150-450 tokens (ids of real answers compress about as badly: a token id carries
~2 bytes of information). Prints one JSON line per variant: MB per shard and for a whole build of
the paper split's 7,500 training questions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "math"))
    opts = parser.parse_args()

    import polars as pl
    from transformers import AutoTokenizer

    from irpo.card import ModelConfig
    from irpo.models import resolve_model
    from irpo.prompts import encode_prompts, render_prompts
    from irpo.tasks import get_task
    from irpo_data.sampling import SAMPLE_SCHEMA

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(ModelConfig().base).path)
    task = get_task("math")
    questions = task.load("train", opts.data_dir).questions[: opts.questions]
    texts = render_prompts(task, questions, tokenizer, "chat")
    ids = encode_prompts(tokenizer, texts)
    rng = random.Random(0)
    rows = {name: [] for name in SAMPLE_SCHEMA}
    for question, text, prompt_ids in zip(questions, texts, ids):
        for k in range(opts.samples):
            answer = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(150, 450))]
            values = dict(
                question_id=question.question_id, sample_idx=k, prompt=text, gold=question.gold,
                completion=tokenizer.decode(answer), n_tokens=len(answer), finish_reason="stop", answer="1",
                correct=False, well_formed=True, grading_timed_out=False, prompt_token_ids=prompt_ids,
                completion_token_ids=answer,
            )  # fmt: skip
            for name, value in values.items():
                rows[name].append(value)
    frame = pl.DataFrame(rows, schema=SAMPLE_SCHEMA)
    shards = 7500 / opts.questions
    with tempfile.TemporaryDirectory() as tmp:
        for name, table in (
            ("both id columns", frame),
            ("no prompt ids", frame.drop("prompt_token_ids")),
            ("text only (before issue 32)", frame.drop("prompt_token_ids", "completion_token_ids")),
        ):
            path = os.path.join(tmp, "shard.parquet")
            table.write_parquet(path)
            size = os.path.getsize(path)
            print(json.dumps({
                "variant": name, "prompt_tokens_mean": round(sum(map(len, ids)) / len(ids)),
                "mb_per_shard": round(size / 1e6, 2), "gb_per_math_build": round(size * shards / 1e9, 2),
            }))  # fmt: skip
        # The pairs folder: datasets' save_to_disk writes Arrow uncompressed, one row per pair, the
        # prompt (text and ids) repeated on each. K = 15 pairs per question, as the MATH card.
        from irpo_data.publish import save_pairs

        per_question = frame.group_by("question_id", maintain_order=True).head(16)
        left, right = per_question.filter(pl.col("sample_idx") < 15), per_question.filter(pl.col("sample_idx") > 0)
        pairs = pl.DataFrame({
            "question_id": left["question_id"], "prompt": left["prompt"], "chosen": left["completion"],
            "rejected": right["completion"], "prompt_token_ids": left["prompt_token_ids"],
            "chosen_token_ids": left["completion_token_ids"], "rejected_token_ids": right["completion_token_ids"],
        })  # fmt: skip
        for name, table in (("pairs with ids", pairs), ("pairs, text only", pairs.select(pairs.columns[:4]))):
            folder = Path(tmp) / name.replace(" ", "_").replace(",", "")
            save_pairs(table, 1, folder)
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            print(json.dumps({
                "variant": name, "pairs": table.height, "mb": round(size / 1e6, 2),
                "gb_per_75k_pairs": round(size / table.height * 75000 / 1e9, 2),
            }))  # fmt: skip


if __name__ == "__main__":
    main()
