"""Peak memory and step time: irpo's trainer (cached reference log-probs) vs TRL's DPOTrainer.

    python bench/bench_train.py [--pairs runs/demo/iter_1/pairs] [--batch 8] [--steps 4] [--bf16]

Same model (the demo card's base), same pairs, batch, learning rate and precision. TRL runs its
DPO+NLL (`loss_type=["sigmoid", "sft"]`) with a reference model in memory, as it does by
default without peft. Each trainer runs in its own process so that peak RSS (ru_maxrss) is
its own. Step time is the mean over steps after the first. irpo's reference pass is timed
separately and reported in tokens/s. Target: at least 30% less peak memory at equal or better
step time.
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


def run_irpo(opts) -> dict:
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from irpo_data.card import ModelConfig
    from irpo_data.models import resolve_model
    from irpo_train.data import collate, tokenize_pairs
    from irpo_train.reference import reference_logps
    from irpo_train.scorer import CompletionScorer
    from irpo_train.trainer import DPONLLTrainer

    path = resolve_model(ModelConfig().base).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    pairs = load_from_disk(opts.pairs)["train"].select(range(opts.batch * opts.steps))
    rows = tokenize_pairs(pairs, tokenizer, 1024).rows
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    chosen, rejected, ref_tok_s = reference_logps(model, rows, tokenizer.pad_token_id, opts.batch, False, opts.bf16)
    rows = [{**r, "ref_chosen_logps": c, "ref_rejected_logps": j} for r, c, j in zip(rows, chosen, rejected)]
    timer = _step_timer()
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
        callbacks=[timer],
        data_collator=lambda b: collate(b, tokenizer.pad_token_id),
    ).train()
    return {"step_s": sum(timer.times[1:]) / len(timer.times[1:]), "ref_tokens_per_s": ref_tok_s}


def run_trl(opts) -> dict:
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from irpo_data.card import ModelConfig
    from irpo_data.models import resolve_model

    path = resolve_model(ModelConfig().base).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    pairs = (
        load_from_disk(opts.pairs)["train"]
        .select(range(opts.batch * opts.steps))
        .select_columns(["prompt", "chosen", "rejected"])
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
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
    parser.add_argument("--which", choices=["irpo", "trl"], help=argparse.SUPPRESS)  # child process
    opts = parser.parse_args()
    if opts.which:
        result = (run_irpo if opts.which == "irpo" else run_trl)(opts)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print("RESULT " + json.dumps(result))
        return
    results = {}
    for which in ("irpo", "trl"):
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--which", which], capture_output=True, text=True
        )
        line = [l for l in child.stdout.splitlines() if l.startswith("RESULT ")]
        if not line:
            sys.exit(f"{which} run failed:\n{child.stderr[-3000:]}")
        results[which] = json.loads(line[0][7:])
    ours, trl = results["irpo"], results["trl"]
    print(f"{'trainer':44} {'peak RSS GB':>11} {'s/step':>7}")
    print(f"{'irpo DPONLLTrainer (cached reference)':44} {ours['peak_rss_gb']:11.2f} {ours['step_s']:7.2f}")
    print(f"{'TRL DPOTrainer (reference model in memory)':44} {trl['peak_rss_gb']:11.2f} {trl['step_s']:7.2f}")
    saving = 1 - ours["peak_rss_gb"] / trl["peak_rss_gb"]
    print(
        f"memory saved {saving:.0%} (target >= 30%); step time {trl['step_s'] / ours['step_s']:.2f}x TRL's "
        "(target >= 1)"
    )
    print(f"irpo reference pass: {ours['ref_tokens_per_s']:.0f} tokens/s")
    print(
        json.dumps(
            {
                "bench": "train",
                "batch_pairs": opts.batch,
                "bf16": opts.bf16,
                "grad_ckpt": opts.grad_ckpt,
                "irpo": ours,
                "trl": trl,
            }
        )
    )


if __name__ == "__main__":
    main()
