"""irpo's training step and reference pass on a random-weight model of a real size: tokens/s, memory
and the share of the GPU's bf16 peak, measured in the same run.

    python bench/gpu_train.py                       # 0.5B and 1.5B (Qwen2.5 shapes), bf16, on the GPU
    python bench/gpu_train.py --sizes tiny --device cpu --steps 2   # the same code on a CPU, in seconds

For a GPU machine with torch, transformers, peft and accelerate but nothing else (no vLLM, polars,
datasets, math-verify or lm-eval, and no network): it imports only irpo_train's loss, scorer,
reference pass and Trainer subclass, which need none of those, and makes its own pairs (random token
ids; a real model's weights would not change the cost of a step). bench/gpu_check.sh runs it there.

Per size it prints one JSON line: parameters, pairs per step and tokens per pair, the reference
pass's tokens/s, the training step's seconds and tokens/s, peak GPU memory, and the model FLOPs
(6 x parameters per token trained) as a share of a bf16 matmul's rate measured in the same run
(8192^3 on a GPU, 2048^3 on a CPU): the step's share of the machine's peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # irpo from this checkout, installed or not

# Qwen2.5's shapes (config.json of Qwen/Qwen2.5-0.5B and -1.5B), and a tiny one for a CPU smoke run.
SIZES = {
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 intermediate_size=256, vocab_size=4096, tie_word_embeddings=True),
}  # fmt: skip


def matmul_tflops(device: str) -> float:
    """bf16 matmul rate of this device, TFLOP/s: the peak a training step is compared with."""
    import torch

    n = 8192 if device == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def random_rows(count: int, vocab: int, prompt: int, answer: int, seed: int) -> list[dict]:
    """Pairs as the trainer takes them (token ids), with answers of a random length up to `answer`."""
    import random

    rng = random.Random(seed)

    def ids(n):
        return [rng.randrange(100, vocab) for _ in range(n)]

    return [
        {
            "question_id": f"q/{i}",
            "prompt_ids": ids(prompt),
            "chosen_ids": ids(rng.randint(answer // 2, answer)),
            "rejected_ids": ids(rng.randint(answer // 2, answer)),
        }
        for i in range(count)
    ]


def run(size: str, opts) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from irpo_train.data import collate
    from irpo_train.reference import reference_logps
    from irpo_train.scorer import CompletionScorer
    from irpo_train.trainer import DPONLLTrainer

    cuda = opts.device == "cuda"
    torch.manual_seed(0)
    config = Qwen2Config(**SIZES[size], max_position_embeddings=4096)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(opts.device)
    params = sum(p.numel() for p in model.parameters())
    rows = random_rows(opts.batch * opts.steps, config.vocab_size, opts.prompt, opts.answer, seed=0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    chosen, rejected, ref_tok_s = reference_logps(model, rows, 0, opts.batch, False, True)
    rows = [{**r, "ref_chosen_logps": c, "ref_rejected_logps": j} for r, c, j in zip(rows, chosen, rejected)]

    class StepTimer(TrainerCallback):
        times: list = []

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=opts.batch // opts.accumulation,
            gradient_accumulation_steps=opts.accumulation,
            max_steps=opts.steps,
            learning_rate=1e-6,
            bf16=True,
            use_cpu=not cuda,
            report_to="none",
            save_strategy="no",
            remove_unused_columns=False,
            disable_tqdm=True,
            logging_steps=1,
            gradient_checkpointing=opts.gradient_checkpointing,
        )
        trainer = DPONLLTrainer(
            model=CompletionScorer(model),
            args=args,
            train_dataset=rows,
            beta=0.1,
            alpha=1.0,
            callbacks=[timer],
            data_collator=lambda batch: collate(batch, 0),
        )
        trainer.remove_callback(PrinterCallback)  # one JSON line per size, not a dict per step
        trainer.train()
    steps = timer.times[1:] or timer.times  # the first step pays for allocations and kernel choice
    step_s = sum(steps) / len(steps)
    tokens = sum(len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows) / opts.steps
    peak = matmul_tflops(opts.device)
    return {
        "size": size,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "params_m": round(params / 1e6, 1),
        "pairs_per_step": opts.batch,
        "tokens_per_step": round(tokens),
        "reference_tokens_per_s": round(ref_tok_s),
        "step_s": round(step_s, 3),
        "train_tokens_per_s": round(tokens / step_s),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
        "bf16_matmul_tflops": round(peak, 1),
        "share_of_bf16_peak": round(6 * params * tokens / step_s / 1e12 / peak, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["0.5b", "1.5b"], choices=list(SIZES))
    parser.add_argument("--device", default=None, help="cuda (default where there is one) or cpu")
    parser.add_argument("--batch", type=int, default=16, help="pairs per optimiser step (the paper's 16)")
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches per step")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompt", type=int, default=200, help="prompt tokens (GSM8K's chat prompts: ~150-250)")
    parser.add_argument("--answer", type=int, default=300, help="longest answer, tokens")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    opts = parser.parse_args()
    import torch

    opts.device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for size in opts.sizes:
        print(json.dumps(run(size, opts)), flush=True)


if __name__ == "__main__":
    main()
