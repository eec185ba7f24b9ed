"""Scaling out on this machine: one training process against two, and held-out checks on vLLM.

    python bench/bench_scale.py [--steps 6] [--batch 8] [--skip-heldout] [--skip-ray]

1. Training step time at the same global batch (train.batch_size pairs per step) with 1 and 2
   processes (torchrun, gloo on CPU), on a tiny random Llama (4 layers, hidden 256) with the demo
   tokenizer: what DDP's all-reduce costs and whether 2 processes pay on this CPU. Each process
   gets OMP_NUM_THREADS = cores / processes, so both runs use every core.
2. The scorer module's overhead: forward + backward of the demo model's log-probs through
   CompletionScorer (what the Trainer wraps) against calling irpo_train.logprobs directly.
3. One held-out check on the demo's 32 held-out questions: greedy generation with the model in the
   trainer (train.select_with=trainer) against one candidate scored on vLLM
   (train.select_with=vllm: an engine start plus generation), same questions and model.
4. Sampling 32 demo questions (N=4) in this process against a local Ray cluster with one engine
   (resources.sampling_backend=ray): wall time and warm tokens/s; the shards must be identical.

Prints one table; the baseline of each row is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tiny_model(folder: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from irpo.card import ModelConfig
    from irpo.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(ModelConfig().base).path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def worker(opts) -> None:
    """One training process (under torchrun): time opts.steps DPO+NLL steps of the global batch."""
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments

    from irpo.prompts import encode_prompts, render_prompts
    from irpo.tasks import get_task
    from irpo_train import distributed
    from irpo_train.data import collate
    from irpo_train.scorer import CompletionScorer
    from irpo_train.trainer import DPONLLTrainer

    PartialState()
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    task = get_task("demo")
    questions = task.load("train").questions[: opts.batch * opts.steps]
    prompts = encode_prompts(tokenizer, render_prompts(task, questions, tokenizer))

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]

    rows = [
        {
            "prompt_ids": p,
            "chosen_ids": ids(f"We count them one by one. The answer is {q.gold}."),
            "rejected_ids": ids(f"We guess. The answer is {int(q.gold) + 3}."),
            "ref_chosen_logps": -50.0,
            "ref_rejected_logps": -30.0,
        }
        for p, q in zip(prompts, questions)
    ]
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="irpo-bench-scale-"),
        per_device_train_batch_size=opts.batch // distributed.world_size(),
        max_steps=opts.steps,
        learning_rate=1e-5,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
        logging_steps=1,
        ddp_find_unused_parameters=False,
    )
    model = AutoModelForCausalLM.from_pretrained(opts.model, dtype=torch.float32)
    DPONLLTrainer(
        model=CompletionScorer(model),
        args=args,
        train_dataset=rows,
        beta=0.1,
        alpha=1.0,
        callbacks=[Timer()],
        data_collator=lambda b: collate(b, tokenizer.pad_token_id),
    ).train()
    if distributed.is_main():
        print("RESULT " + json.dumps({"step_s": sum(times[1:]) / len(times[1:])}), flush=True)


def launch(processes: int, opts, model: Path) -> dict:
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command += [__file__, "--worker", "--model", str(model), "--steps", str(opts.steps), "--batch", str(opts.batch)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{processes}-process run failed:\n{done.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def wrapper_overhead(repeats: int = 5) -> tuple[float, float]:
    """(direct, through CompletionScorer) seconds of one forward + backward on the demo model."""
    import torch
    from transformers import AutoModelForCausalLM

    from irpo.card import ModelConfig
    from irpo.models import resolve_model
    from irpo_train.logprobs import completion_logps
    from irpo_train.scorer import CompletionScorer

    model = AutoModelForCausalLM.from_pretrained(resolve_model(ModelConfig().base).path, dtype=torch.float32)
    ids = torch.randint(0, 1000, (8, 160))
    mask = torch.ones_like(ids)
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, 60:] = True
    scorer = CompletionScorer(model)

    def timed(fn) -> float:
        fn()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model.zero_grad()
            fn()[0].sum().backward()
        return (time.perf_counter() - start) / repeats

    direct = timed(lambda: completion_logps(model, ids, mask, completion))
    wrapped = timed(lambda: scorer(ids, mask, completion))
    return direct, wrapped


def held_out_checks() -> tuple[float, float, float, float, float]:
    """(in-trainer s, vLLM s, of which vLLM start s, in-trainer accuracy, vLLM accuracy) on the demo's held-out set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from irpo.card_loader import load_card
    from irpo.engines import VLLMEngine
    from irpo.hardware import resolve_dtype
    from irpo.models import resolve_model
    from irpo.prompts import Prompts
    from irpo.tasks import task_from_config
    from irpo_data.build import question_sets
    from irpo_train.candidates import candidate_accuracy
    from irpo_train.trainer import HeldOutQuestions, held_out_accuracy

    card = load_card("demo")
    path = resolve_model(card.model.base).path
    tokenizer = AutoTokenizer.from_pretrained(path)
    task = task_from_config(card.task)
    questions = question_sets(card).held_out
    held_out = HeldOutQuestions(
        task, questions, Prompts.of(task, questions, tokenizer, "auto").ids, tokenizer, card.sampling.max_new_tokens
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    start = time.perf_counter()
    trainer_accuracy = held_out_accuracy(model, held_out)
    in_trainer = time.perf_counter() - start
    del model
    start = time.perf_counter()
    engine = VLLMEngine(path, resolve_dtype(card.sampling.dtype), card.seed, card.sampling, card.resources)
    engine.llm  # noqa: B018  (starts the engine: timed apart)
    started = time.perf_counter() - start
    vllm_accuracy = candidate_accuracy(engine, held_out)
    on_vllm = time.perf_counter() - start
    return in_trainer, on_vllm, started, trainer_accuracy, vllm_accuracy


def ray_against_local(questions: int = 32, per_shard: int = 4) -> dict:
    """Sampling the demo's first `questions` training questions (N=4, 128 tokens) in this process
    and on a local Ray cluster with one engine: wall time of the call (engine start included) and
    tokens/s after the first shard (engines warm). The shards must come out byte-identical."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from irpo.card import ResourcesConfig
    from irpo.card_loader import load_card
    from irpo.models import resolve_model
    from irpo.prompts import Prompts
    from irpo.tasks import task_from_config
    from irpo_data.sampling import SamplingParams, make_engine, sample_answers

    card = load_card("demo")
    path = resolve_model(card.model.base).path
    task = task_from_config(card.task)
    chosen = task.load("train").questions[:questions]
    prompts = Prompts.of(task, chosen, AutoTokenizer.from_pretrained(path), "auto")
    params = SamplingParams(num_samples=4, temperature=0.8, top_p=1.0, max_new_tokens=128, seed=0)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("local", "ray"):
            engine = make_engine(path, card.sampling, 0, resources=replace(ResourcesConfig(), sampling_backend=backend))
            stamps: list[tuple[float, int]] = []
            inner = engine.sample_shards

            def stamped(job, todo, inner=inner, stamps=stamps):
                for shard in inner(job, todo):
                    stamps.append((time.perf_counter(), shard[2]))
                    yield shard

            engine.sample_shards = stamped
            start = time.perf_counter()
            try:
                args = (task, chosen, prompts.texts, engine, params, Path(tmp) / backend, per_shard, {}, False)
                sample_answers(*args, prompt_ids=prompts.ids)
            finally:
                engine.close()
            warm_tokens = sum(tokens for _, tokens in stamps[1:])
            results[backend] = {
                "wall_s": time.perf_counter() - start,
                "warm_tok_s": warm_tokens / (stamps[-1][0] - stamps[0][0]),
                "shards": {f.name: f.read_bytes() for f in sorted((Path(tmp) / backend).glob("part-*"))},
            }
    results["identical"] = results["local"]["shards"] == results["ray"]["shards"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8, help="global batch: pairs per optimizer step")
    parser.add_argument("--skip-heldout", action="store_true", help="leave out the held-out check comparison")
    parser.add_argument("--skip-ray", action="store_true", help="leave out sampling on a local Ray cluster")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        return worker(opts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        tiny_model(model)
        one, two = launch(1, opts, model), launch(2, opts, model)
    rows.append(("training step, global batch %d, 1 process" % opts.batch, one["step_s"], "baseline"))
    rows.append(("same, 2 processes (DDP, gloo)", two["step_s"], f"{one['step_s'] / two['step_s']:.2f}x speed-up"))
    direct, wrapped = wrapper_overhead()
    rows.append(("demo model fwd+bwd, logprobs called directly", direct, "baseline"))
    rows.append(("same, through CompletionScorer", wrapped, f"{100 * (wrapped / direct - 1):+.1f}%"))
    if not opts.skip_heldout:
        in_trainer, on_vllm, started, acc_trainer, acc_vllm = held_out_checks()
        rows.append((f"held-out check in the trainer (acc {100 * acc_trainer:.1f}%)", in_trainer, "baseline"))
        rows.append(
            (
                f"held-out check on vLLM (acc {100 * acc_vllm:.1f}%; start {started:.0f} s)",
                on_vllm,
                f"{in_trainer / on_vllm:.2f}x speed-up",
            )
        )
    if not opts.skip_ray:
        ray = ray_against_local()
        local, remote = ray["local"], ray["ray"]
        same = "byte-identical shards" if ray["identical"] else "SHARDS DIFFER"
        share = 100 * remote["warm_tok_s"] / local["warm_tok_s"]
        rows.append(
            (
                "sampling 32 questions x 4 in this process (engine start included)",
                local["wall_s"],
                f"baseline; warm {local['warm_tok_s']:.0f} tokens/s",
            )
        )
        rows.append(
            (
                "same on a local Ray cluster, 1 engine",
                remote["wall_s"],
                f"warm {remote['warm_tok_s']:.0f} tokens/s = {share:.0f}% of in-process; {same}",
            )
        )
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'seconds':>8}  vs baseline")
    for what, seconds, versus in rows:
        print(f"{what:<{width}}  {seconds:>8.3f}  {versus}")


if __name__ == "__main__":
    main()
