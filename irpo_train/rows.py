"""What one training trains on: the pairs as token ids, or the winners, or the gold solutions, with the
reference model's log-probs where the objective needs them.

    iter_T/pairs ─► tokenize (drop what exceeds train.max_length) ─► M_{T-1} loads
                 ─► reference log-probs (every pair, cached; or the probe pairs only) ─► rows

M_{T-1}, loaded for the reference pass, stays in job.loaded: the first training run starts from it.
"""

from __future__ import annotations

import copy

import polars as pl

from irpo import timing
from irpo.errors import SettingError
from irpo.objectives import ABLATIONS, OBJECTIVES
from irpo.pairs import fingerprint as table_fingerprint
from irpo.tasks import task_from_config
from irpo_train.data import gold_solution_rows, tokenize_pairs
from irpo_train.job import TrainJob, load_model
from irpo_train.reference import StepReference, load_or_compute, reference_logps
from irpo_train.trainer import PROBE_BATCH_SIZE, probe_indices


def training_rows(job: TrainJob, tokenizer, progress: bool) -> tuple[list[dict], list[dict], dict]:
    """(rows to train on, probe rows with reference log-probs, notes for the manifest); M_{T-1},
    loaded for the reference pass, is left in job.loaded for the first run."""
    cfg, task = job.cfg, task_from_config(job.card.task)
    tokenized = tokenize_pairs(job.dataset, cfg.max_length)
    if not tokenized.rows:
        raise SettingError(
            f"every pair of {job.run.pairs(job.iteration)} is longer than train.max_length={cfg.max_length}; raise it"
        )
    notes: dict = {"pairs_trained": len(tokenized.rows), "pairs_dropped_too_long": tokenized.dropped_too_long}
    gold = None
    objective = OBJECTIVES[cfg.objective]
    if objective.needs_gold:  # before any model is loaded: a task without solutions fails fast
        prompts = _sampled_prompt_ids(job, tokenizer)
        questions = [q for q in job.sets.sampled if q.question_id in prompts]
        gold = gold_solution_rows(
            task,
            questions,
            [prompts[q.question_id] for q in questions],
            tokenizer,
            cfg.max_length,
            job.format.end_of_turn_id,
        )
        notes["gold"] = {k: v for k, v in vars(gold).items() if k != "rows"}
    # DPO needs the reference log-probs of every pair before training (precompute) or of each batch
    # as it trains (per_step); the SFT objectives only those of the probe pairs, for the log-prob
    # figure, which is measured on the same pairs for every objective.
    pairwise = objective.pairwise
    per_step = pairwise and cfg.reference_logps == "per_step"
    probe = probe_indices(len(tokenized.rows), cfg.probe_pairs, job.card.seed) if cfg.probe_pairs > 0 else []
    everything = pairwise and not per_step
    scored = tokenized.rows if everything else [tokenized.rows[i] for i in probe]
    # per_step scores the probe pairs exactly as the probe measures them, so its step 0 needs no pass.
    batch_size = PROBE_BATCH_SIZE if per_step else cfg.batch_size
    probe_only = {
        "probe_pairs": cfg.probe_pairs,
        "seed": job.card.seed,
        **({"batch_size": batch_size} if per_step else {}),
    }
    key = {
        "reference_weights_sha256": job.reference.weights_sha256,
        "pairs_fingerprint": job.fingerprint,
        "max_length": cfg.max_length,
        "bf16": job.bf16,
        "attn_implementation": cfg.attn_implementation,  # another kernel, other float noise
        **({} if everything else {"probe_only": probe_only}),
    }
    with timing.phase("model load"):
        model = job.loaded = load_model(job)  # M_{T-1}: the first run's starting point, and by default the reference
        # train.reference=initial at T >= 2: M_0 scores the pairs, a model of its own (LoRA with per_step is refused).
        reference = load_model(job, reference=True) if job.fixed_reference and (scored or per_step) else model
        if per_step:  # a frozen copy, before training touches the weights; LoRA switches its adapters off instead
            frozen = reference if reference is not model else None if cfg.lora else copy.deepcopy(model)
            job.step_reference = StepReference(frozen, job.bf16)
    notes["reference_logps"] = cfg.reference_logps if pairwise else "probe pairs only"
    if scored:
        siblings = [job.run.model(job.iteration, a) for a in (None, *ABLATIONS)]  # their cache's key decides
        with timing.phase("reference pass"):
            job.cache_dir.mkdir(parents=True, exist_ok=True)
            chosen, rejected, meta = load_or_compute(
                job.cache_dir,
                key,
                lambda: reference_logps(reference, scored, tokenizer.pad_token_id, batch_size, progress, job.bf16),
                elsewhere=siblings,
            )
        notes["reference_tokens_per_s"] = meta.get("tokens_per_s")
        scored = [{**r, "ref_chosen_logps": c, "ref_rejected_logps": j} for r, c, j in zip(scored, chosen, rejected)]
    probe_rows = [scored[i] for i in probe] if everything else scored
    if everything:
        rows = scored
    elif per_step:
        rows = tokenized.rows
    elif objective.rows == "winners":  # each pair's winner, in the pairs' order
        rows = [
            {"question_id": r["question_id"], "prompt_ids": r["prompt_ids"], "chosen_ids": r["chosen_ids"]}
            for r in tokenized.rows
        ]
    else:
        rows = gold.rows
    return rows, probe_rows, notes


def _sampled_prompt_ids(job: TrainJob, tokenizer) -> dict[str, list[int]]:
    """Question id -> the prompt ids the build gave the engine, for the questions it sampled."""
    sampled = {q.question_id for q in job.sets.sampled}
    return {qid: ids for qid, ids in job.sets.prompt_ids.items() if qid in sampled}


def selection_fingerprint(job: TrainJob, held_ids: set[str]) -> str:
    """Fingerprint of the pairs without the held-out questions: what the selection run trained on."""

    table = pl.from_arrow(job.dataset.data.table).filter(~pl.col("question_id").is_in(sorted(held_ids)))
    return table_fingerprint(table.drop("iteration") if "iteration" in table.columns else table)
