"""Peak memory, step time and throughput: irpo's trainer vs TRL's DPOTrainer.

    python bench/bench_train.py [--pairs runs/demo/iter_1/pairs] [--batch 8] [--steps 4] [--bf16] [--attn eager]

Same model (the demo card's base), same pairs, batch, learning rate, precision and attention
kernel (--attn: transformers' sdpa, its default, or eager, as train.attn_implementation sets). Three rows:
irpo with train.reference_logps=precompute (reference log-probs cached before training, one
model), irpo with per_step (a frozen copy scores each batch), and TRL's DPO+NLL
(`loss_type=["sigmoid", "sft"]`) with a reference model in memory, as it does by default
without peft. Each trainer runs in its own process so that peak RSS (ru_maxrss) is its own.
Step time is the mean over steps after the first. irpo's reference pass is timed separately
and reported in tokens/s.

Throughput: real (unpadded) tokens per step x 6 x parameters FLOPs (forward and backward; the
per-step reference's forward is not counted), per second, against a 2048x2048 matmul in the
training precision measured in this run (its compute limit).
Targets: at least 30% less peak memory than TRL at equal or better step time; a step at
>= 30% of the matmul limit.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def _counting_collator(collate, pad_token_id: int, tokens: list):
    """The trainer's collator, noting each batch's (real tokens, padded positions)."""

    def collator(batch):
        out = collate(batch, pad_token_id)
        tokens.append((int(out["attention_mask"].sum()), out["attention_mask"].numel()))
        return out

    return collator


def run_irpo(opts) -> dict:
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from irpo.card import ModelConfig
    from irpo.models import resolve_model
    from irpo_train.data import collate, tokenize_pairs
    from irpo_train.reference import StepReference, reference_logps
    from irpo_train.scorer import CompletionScorer
    from irpo_train.trainer import DPONLLTrainer

    path = resolve_model(ModelConfig().base).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    pairs = load_from_disk(opts.pairs)["train"].select(range(opts.batch * opts.steps))
    rows = tokenize_pairs(pairs, 1024).rows  # the pairs' recorded token ids (a build made since issue 32)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=opts.attn)
    step_reference, ref_tok_s = None, None
    if opts.which == "irpo-per-step":
        step_reference = StepReference(
            AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=opts.attn), opts.bf16
        )
    else:
        chosen, rejected, ref_tok_s = reference_logps(model, rows, tokenizer.pad_token_id, opts.batch, False, opts.bf16)
        rows = [{**r, "ref_chosen_logps": c, "ref_rejected_logps": j} for r, c, j in zip(rows, chosen, rejected)]
    timer, tokens = _step_timer(), []
    args = TrainingArguments(
        output_dir="/tmp/irpo-bench-train",
        per_device_train_batch_size=opts.batch,
        max_steps=opts.steps,
        learning_rate=5e-6,
        bf16=opts.bf16,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
        logging_steps=1,
        gradient_checkpointing=opts.grad_ckpt,
    )
    DPONLLTrainer(
        model=CompletionScorer(model),
        args=args,
        train_dataset=rows,
        beta=0.1,
        alpha=1.0,
        reference=step_reference,
        callbacks=[timer],
        data_collator=_counting_collator(collate, tokenizer.pad_token_id, tokens),
    ).train()
    return {
        "step_s": sum(timer.times[1:]) / len(timer.times[1:]),
        "ref_tokens_per_s": ref_tok_s,
        "tokens_per_step": sum(t for t, _ in tokens[1:]) / len(tokens[1:]),
        "padded_per_step": sum(p for _, p in tokens[1:]) / len(tokens[1:]),
        "params": sum(p.numel() for p in model.parameters()),
    }


def run_trl(opts) -> dict:
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from irpo.card import ModelConfig
    from irpo.models import resolve_model

    path = resolve_model(ModelConfig().base).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    pairs = (
        load_from_disk(opts.pairs)["train"]
        .select(range(opts.batch * opts.steps))
        .select_columns(["prompt", "chosen", "rejected"])
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=opts.attn)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=opts.attn)
    timer = _step_timer()
    args = DPOConfig(
        output_dir="/tmp/trl-bench-train",
        per_device_train_batch_size=opts.batch,
        max_steps=opts.steps,
        learning_rate=5e-6,
        beta=0.1,
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, 1.0],
        bf16=opts.bf16,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        max_length=1024,
        gradient_checkpointing=opts.grad_ckpt,
    )
    DPOTrainer(
        model=model, ref_model=ref, args=args, train_dataset=pairs, processing_class=tokenizer, callbacks=[timer]
    ).train()
    return {"step_s": sum(timer.times[1:]) / len(timer.times[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="runs/demo/iter_1/pairs")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing in both trainers")
    parser.add_argument(
        "--attn",
        choices=["sdpa", "eager"],
        default="sdpa",
        help="attention kernel of every model (train.attn_implementation)",
    )
    parser.add_argument("--which", choices=list(ROWS), help=argparse.SUPPRESS)  # child process
    opts = parser.parse_args()
    if opts.which:
        result = (run_trl if opts.which == "trl" else run_irpo)(opts)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print("RESULT " + json.dumps(result))
        return
    import torch
    from bench_sampling import matmul_flops  # this folder

    limit = matmul_flops(torch.bfloat16 if opts.bf16 else torch.float32)  # before any trainer: nothing beside it
    results = {}
    for which in ROWS:
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--which", which], capture_output=True, text=True
        )
        line = [l for l in child.stdout.splitlines() if l.startswith("RESULT ")]
        if not line:
            sys.exit(f"{which} run failed:\n{child.stderr[-3000:]}")
        results[which] = json.loads(line[0][7:])
    ours, trl = results["irpo"], results["trl"]
    params = ours["params"]
    print(f"{'trainer':46} {'peak RSS GB':>11} {'s/step':>7} {'tokens/step':>11} {'% of limit':>10}")
    for which, label in ROWS.items():
        row = results[which]
        share = ""
        if "tokens_per_step" in row:  # TRL's batches are its own; the same pairs, so the same real tokens
            row["limit_share"] = 6 * params * row["tokens_per_step"] / row["step_s"] / limit
            share = f"{row['tokens_per_step']:11.0f} {row['limit_share']:10.1%}"
        print(f"{label:46} {row['peak_rss_gb']:11.2f} {row['step_s']:7.2f} {share}")
    saving = 1 - ours["peak_rss_gb"] / trl["peak_rss_gb"]
    print(
        f"memory saved {saving:.0%} (target >= 30%); step time {trl['step_s'] / ours['step_s']:.2f}x TRL's "
        "(target >= 1)"
    )
    print(
        f"matmul limit ({'bf16' if opts.bf16 else 'fp32'}, 2048x2048): {limit / 1e9:.0f} GFLOP/s; padding: "
        f"{1 - ours['tokens_per_step'] / ours['padded_per_step']:.0%} of the positions of a step"
    )
    print(f"irpo reference pass: {ours['ref_tokens_per_s']:.0f} tokens/s")
    print(
        json.dumps(
            {
                "bench": "train",
                "batch_pairs": opts.batch,
                "bf16": opts.bf16,
                "grad_ckpt": opts.grad_ckpt,
                "attn": opts.attn,
                "matmul_flops": limit,
                **results,
            }
        )
    )


ROWS = {
    "irpo": "irpo DPONLLTrainer (reference precomputed)",
    "irpo-per-step": "irpo DPONLLTrainer (reference per step)",
    "trl": "TRL DPOTrainer (reference model in memory)",
}


if __name__ == "__main__":
    main()
