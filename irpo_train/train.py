"""`irpo-train --iter T`: train M_T from M_{T-1} on iteration T's pairs, into runs/NAME/models/M_T/.

    iter_T/pairs ─► tokenize ─► reference log-probs (cached) ─► DPONLLTrainer ─► best held-out step
                 ─► models/M_T/  (transformers folder + metrics.jsonl, probe.jsonl, logps.png, checkpoint_choice.json,
                                  ref_logps.parquet, train_manifest.json)

With `ablation=OBJECTIVE` (irpo-train --ablation, irpo run --ablations) the same pairs train
a side model models/M_T-OBJECTIVE with that train.objective; M_T and the run's later iterations
are untouched, so the baselines are compared on identical data (the pairs' fingerprint is in
every train_manifest.json).

The policy starts as M_{T-1}, which is also the reference, so the reference log-probs are
computed with the policy's own weights before the first step: no second model is ever loaded.
Work in progress lives in models/M_T.work/ (checkpoints, cache, metrics); a killed run resumes
from its last checkpoint, and M_T/ appears in one rename when training is done.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import torch

from irpo_data import __version__
from irpo_data.build import sampling_model, training_questions
from irpo_data.card import BUILD_SECTIONS, OBJECTIVES, TRAIN_SECTIONS, Card
from irpo_data.hardware import resolve_bf16
from irpo_data.runs import RunFolder, atomic_dir, write_json_atomic
from irpo_data.sampling import render_prompts
from irpo_data.tasks import get_task
from irpo_train.data import PairDataError, collate, gold_solution_rows, tokenize_pairs
from irpo_train.loss import PAIRWISE
from irpo_train.plots import plot_logps
from irpo_train.reference import load_or_compute, reference_logps
from irpo_train.trainer import DPONLLTrainer, HeldOutAccuracy, MetricsFile, ProbeLogps, ProgressWithLoss, probe_indices

log = logging.getLogger(__name__)


def load_pairs(run: RunFolder, iteration: int):
    from datasets import load_from_disk

    pairs_dir, manifest = run.pairs(iteration), run.manifest(iteration)
    if not manifest.is_file() or not pairs_dir.is_dir():
        raise PairDataError(f"{run.iteration(iteration)} has no finished pair dataset; run `irpo-data build --iter {iteration}` first")
    dataset = load_from_disk(str(pairs_dir))["train"]
    if dataset.num_rows == 0:
        raise PairDataError(
            f"{pairs_dir} has no pairs (see {run.iteration(iteration) / 'README.md'} for why); "
            "raise sampling.num_samples or use an easier task, then rebuild"
        )
    return dataset, json.loads(manifest.read_text())["dataset_fingerprint"]


def train_iteration(card: Card, iteration: int, runs_dir: str | Path = "runs", progress: bool = True, ablation: str | None = None) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import get_last_checkpoint

    run = RunFolder.for_card(card, runs_dir)
    run.freeze_card(card, BUILD_SECTIONS)  # the pairs came from these; train.* may change
    if ablation is not None:  # after freezing: the run's card.yaml keeps the main line's objective
        card = dataclasses.replace(card, train=dataclasses.replace(card.train, objective=ablation))
    dataset, fingerprint = load_pairs(run, iteration)
    reference = sampling_model(card, run, iteration, None)  # M_{T-1}: the model iteration T sampled from
    out_dir = run.model(iteration, ablation)
    work = out_dir.with_name(out_dir.name + ".work")
    identity = {
        "card_sha256": card.sha256(TRAIN_SECTIONS), "pairs_fingerprint": fingerprint,
        "reference_weights_sha256": reference.weights_sha256,
        "bf16": resolve_bf16(card.train.bf16),  # train.bf16=auto resolves per machine; another precision is another model
    }
    done = out_dir / "train_manifest.json"
    if done.is_file() and {k: json.loads(done.read_text()).get(k) for k in identity} == identity:
        log.info("%s is already trained from these pairs and this reference; nothing to do", out_dir)
        return out_dir
    _start_or_resume(work, identity)

    cfg = card.train
    bf16 = identity["bf16"]
    task = get_task(card.task.name)
    questions, held_out, _, _ = training_questions(card)
    tokenizer = AutoTokenizer.from_pretrained(reference.path, trust_remote_code=card.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenized = tokenize_pairs(dataset, tokenizer, cfg.max_length)
    if not tokenized.rows:
        raise PairDataError(f"every pair of {run.pairs(iteration)} is longer than train.max_length={cfg.max_length}; raise it")
    gold = None
    if cfg.objective == "sft_gold":  # before any model is loaded: a task without solutions fails fast
        gold = gold_solution_rows(task, questions, render_prompts(task, questions, tokenizer), tokenizer, cfg.max_length)
    model = AutoModelForCausalLM.from_pretrained(reference.path, dtype=torch.float32, trust_remote_code=card.model.trust_remote_code)

    # DPO needs the reference log-probs of every pair; the SFT objectives only those of the probe
    # pairs, for the log-prob figure, which is measured on the same pairs for every objective.
    pairwise = cfg.objective in PAIRWISE
    probe = probe_indices(len(tokenized.rows), cfg.probe_pairs, card.seed) if cfg.probe_pairs > 0 else []
    scored = tokenized.rows if pairwise else [tokenized.rows[i] for i in probe]
    key = {
        "reference_weights_sha256": reference.weights_sha256, "pairs_fingerprint": fingerprint, "max_length": cfg.max_length,
        "bf16": bf16, **({} if pairwise else {"probe_only": {"probe_pairs": cfg.probe_pairs, "seed": card.seed}}),
    }  # fmt: skip
    chosen, rejected, ref_meta = load_or_compute(
        work, key, lambda: reference_logps(model, scored, tokenizer.pad_token_id, cfg.batch_size, progress, bf16),
        elsewhere=[run.model(iteration, a) for a in (None, *OBJECTIVES)],  # siblings; their key decides
    ) if scored else ([], [], {})  # fmt: skip
    scored = [{**r, "ref_chosen_logps": c, "ref_rejected_logps": j} for r, c, j in zip(scored, chosen, rejected)]
    probe_rows = [scored[i] for i in probe] if pairwise else scored
    if pairwise:
        rows = scored
    elif gold is None:  # sft_winners: each pair's winner, in the pairs' order
        rows = [{"prompt_ids": r["prompt_ids"], "chosen_ids": r["chosen_ids"]} for r in tokenized.rows]
    else:
        rows = gold.rows
    if cfg.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, target_modules="all-linear", task_type="CAUSAL_LM"))

    held_out = held_out[: cfg.eval_questions] if cfg.eval_questions is not None else held_out
    accuracy = HeldOutAccuracy(
        task, held_out, render_prompts(task, held_out, tokenizer), tokenizer, cfg.eval_every,
        card.sampling.max_new_tokens, work / "best", work / "checkpoint_choice.json", bf16=bf16,
    )  # fmt: skip
    args = TrainingArguments(
        output_dir=str(work / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.warmup_steps,
        max_steps=cfg.max_steps,
        logging_steps=1,
        save_steps=cfg.eval_every,
        save_total_limit=1,
        seed=card.seed,
        bf16=bf16,
        gradient_checkpointing=cfg.gradient_checkpointing,
        use_cpu=not torch.cuda.is_available(),
        report_to=cfg.report_to,
        remove_unused_columns=False,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )
    callbacks = [MetricsFile(work / "metrics.jsonl"), accuracy]
    if probe_rows:
        callbacks.append(ProbeLogps(probe_rows, cfg.probe_every or cfg.eval_every, tokenizer.pad_token_id, work / "probe.jsonl", bf16))
    trainer = DPONLLTrainer(
        model=model, args=args, train_dataset=rows, beta=cfg.beta, alpha=cfg.alpha, objective=cfg.objective,
        data_collator=lambda batch: collate(batch, tokenizer.pad_token_id), callbacks=callbacks,
    )  # fmt: skip
    # The stock bar prints a dict per step; ours shows the loss in the bar. Quiet: neither.
    trainer.remove_callback(ProgressCallback if progress else PrinterCallback)
    if progress:
        trainer.add_callback(ProgressWithLoss)
    checkpoint = get_last_checkpoint(str(work / "checkpoints")) if (work / "checkpoints").is_dir() else None
    if checkpoint:
        log.info("resuming training from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)

    best = accuracy.best()
    final = _final_model(model, work / "best", reference.path, cfg.lora, best)
    with atomic_dir(out_dir) as tmp:
        final.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in ("metrics.jsonl", "probe.jsonl", "checkpoint_choice.json", "ref_logps.parquet", "ref_logps.json"):
            if (work / name).is_file():
                shutil.copy2(work / name, tmp / name)
        plot_logps(tmp, cfg.beta, title=f"{out_dir.name}, objective {cfg.objective}")
        trained_on = {
            "dpo_nll": "the pairs", "dpo": "the pairs", "sft_winners": "the pairs' winners (chosen answers)",
            "sft_gold": f"gold solutions of the {len(questions)} questions iteration {iteration} sampled",
        }  # fmt: skip
        write_json_atomic(tmp / "train_manifest.json", {
            **identity, "irpo_version": __version__, "iteration": iteration, "reference": reference.spec,
            "objective": cfg.objective, "ablation": ablation is not None, "trained_on": trained_on[cfg.objective],
            "rows_trained": len(rows), **({"gold": {k: v for k, v in vars(gold).items() if k != "rows"}} if gold else {}),
            "chosen_step": best and best["step"], "held_out_accuracy": best and best["accuracy"],
            "why": "highest greedy accuracy on the held-out training questions; earliest step among ties",
            "pairs_trained": len(tokenized.rows), "pairs_dropped_too_long": tokenized.dropped_too_long,
            "reference_tokens_per_s": ref_meta.get("tokens_per_s"), "steps": trainer.state.global_step,
        })  # fmt: skip
    shutil.rmtree(work)  # checkpoints are large; everything worth keeping is in M_T/
    log.info("%s (%s) written to %s (step %s chosen)", out_dir.name, cfg.objective, out_dir, best and best["step"])
    return out_dir


def _start_or_resume(work: Path, identity: dict) -> None:
    """Keep a killed run's work only if it was started with this card, pairs and reference.

    Otherwise its checkpoints and metrics go (resuming them would mix two recipes); the cached
    reference log-probs stay, as they carry their own key and are checked on use.
    """
    started = work / "identity.json"
    if work.is_dir() and (not started.is_file() or json.loads(started.read_text()) != identity):
        log.info("%s was started with another card, pairs or reference; starting it over", work)
        for path in work.iterdir():
            if not path.name.startswith("ref_logps."):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    write_json_atomic(started, identity)


def _final_model(model, best_dir: Path, reference_path: Path, lora: bool, best: dict | None):
    """The best held-out step's model, merged to plain weights if trained with LoRA."""
    from transformers import AutoModelForCausalLM

    if best is None or not best_dir.is_dir():
        log.warning("no held-out evaluation picked a step; keeping the last step's model")
        return model.merge_and_unload() if lora else model
    if lora:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(reference_path, dtype=torch.float32)
        return PeftModel.from_pretrained(base, best_dir).merge_and_unload()
    return AutoModelForCausalLM.from_pretrained(best_dir, dtype=torch.float32)
