"""Make the run folder of tests/assets/previous_run/ with whatever irpo is importable: a whole `irpo run`
(one iteration: build, train, evaluate) on a micro model, small enough to keep in the repository.

    python tests/assets/previous_run/make.py OUT        # writes OUT/base_model, OUT/card.yaml, OUT/runs/prev

It was run once with the release before the one that reads it (the commit is in README.md beside this
file), so tests/test_previous_run.py can check that a newer irpo finds that run complete: no stage
re-runs, nothing is set aside. The model is a 2-layer Llama with a 64-wide hidden state and a
400-token BPE vocabulary trained on the demo task's questions (random weights, seed 0): what it
answers does not matter, only that every stage runs for real and writes its records.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CARD = """\
# The previous release's run of tests/test_previous_run.py (made by make.py beside this file).
name: prev
seed: 0
iterations: 1
task: {name: demo, held_out: 4, max_questions: 8}
model: {base: base_model}
sampling: {num_samples: 4, temperatures: [1.0], max_new_tokens: 24, dtype: float32, max_model_len: 512}
pairs: {pairs_per_question: 2, max_tokens: 24}
train: {max_steps: 2, select_every: 2, batch_size: 2, learning_rate: 1.0e-4, bf16: false, select_with: trainer,
        retrain_with_held_out: false, probe_pairs: 2, select_baseline: false}
eval: {maj_k: 2, limit: 4, max_new_tokens: 24}
"""


def micro_model(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from irpo.tasks.demo import generate_rows

    texts = [r["question"] + " " + r["solution"] for split in ("train", "test") for r in generate_rows(split)]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"]))
    from tokenizers import decoders

    bpe.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    micro_model(out / "base_model")
    (out / "card.yaml").write_text(CARD)
    irpo = [sys.executable, "-c", "from irpo_run.cli import main; main()"]
    subprocess.run([*irpo, "run", "--card", "card.yaml", "--runs-dir", "runs"], cwd=out, check=True, env=os.environ)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
