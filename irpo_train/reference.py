"""Reference log-probs: computed once per (reference model, pair dataset) and cached, or per step.

DPO compares the policy with the frozen reference M_{T-1} on every pair. Those numbers never
change during training, so with train.reference_logps=precompute they are computed in one
batched no-grad pass before it and the reference model is freed: a training step then holds the
policy alone. With per_step (`StepReference`) the reference scores each batch as it is trained
on: only the pairs the steps visit, which is cheaper when max_steps x batch_size is well below
the number of pairs (the demo's 16 + at most 16 steps of 4 visit at most 128 of ~640).

Cache: runs/NAME/models/M_T.work/ref_logps.parquet, one row per tokenized pair
(ref_chosen_logps, ref_rejected_logps), with its key in ref_logps.json: the reference's weights
hash, the pair dataset's fingerprint and max_length. A cache whose key differs is stale and is
recomputed (and the log says why); it is never used.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import torch

from irpo.reading import RecordError, read_json, read_parquet
from irpo.runs import write_json_atomic, write_parquet_atomic
from irpo_train import distributed
from irpo_train.data import collate
from irpo_train.logprobs import completion_logps
from irpo_train.scorer import CompletionScorer, as_scorer

log = logging.getLogger(__name__)


def reference_logps(
    model, rows, pad_token_id: int, batch_size: int = 8, progress: bool = True, bf16: bool = False
) -> tuple[list[float], list[float], float]:
    """(chosen, rejected) summed log-probs of every pair under `model`, and tokens/s of the pass.

    With `bf16` the pass runs under the same bf16 autocast as training, so that at step 1 the
    policy's log-probs equal these and every reward starts at exactly zero. Under several
    processes each scores every world_size-th batch and every process gets all the values; the
    batches are the ones one process would make, so the numbers are too.
    """
    from tqdm.auto import tqdm

    scorer = as_scorer(model)
    scorer.eval()
    # Similar lengths together: less padding per batch. Results go back in the input order.
    order = sorted(
        range(len(rows)),
        key=lambda i: len(rows[i]["prompt_ids"]) + len(rows[i]["chosen_ids"]) + len(rows[i]["rejected_ids"]),
    )
    batches = [order[begin : begin + batch_size] for begin in range(0, len(order), batch_size)]
    scored: dict[int, tuple[float, float]] = {}
    tokens, start = 0, time.perf_counter()
    device = next(scorer.parameters()).device
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for index in tqdm(
            batches[distributed.rank() :: distributed.world_size()],
            desc="reference log-probs",
            unit="batch",
            disable=not (progress and distributed.is_main()),
        ):
            batch = {k: v.to(device) for k, v in collate([rows[i] for i in index], pad_token_id).items()}
            logps, _ = scorer(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
            tokens += int(batch["attention_mask"].sum())
            for j, i in enumerate(index):
                scored[i] = (logps[j].item(), logps[j + len(index)].item())
    seconds = time.perf_counter() - start
    parts = distributed.all_gather((scored, tokens))
    for part, _ in parts:
        scored.update(part)
    missing = len(rows) - len(scored)
    if missing:  # a process that scored too little would shift every later pair's reward
        raise RuntimeError(f"the reference pass scored {len(scored)} of {len(rows)} pairs ({missing} missing)")
    tokens = sum(t for _, t in parts)
    return (
        [scored[i][0] for i in range(len(rows))],
        [scored[i][1] for i in range(len(rows))],
        (tokens / seconds if seconds else 0.0),
    )


class StepReference:
    """train.reference_logps=per_step: the reference's log-probs of each batch as it is trained on.

    `frozen`: a copy of M_{T-1}, kept frozen (full fine-tuning), or None with LoRA, where the
    reference is the policy with its adapters switched off (peft's `disable_adapter`), so no second
    model is held. No gradients, and the autocast of training: at step 1 policy and reference are
    the same weights on the same batch, so every reward is exactly zero, as with precompute. Not
    cached: a pair visited twice is scored twice, so a resumed run gets the same numbers as an
    uninterrupted one.

    Under bf16 autocast the copy's linear layers are stored in bf16: autocast would round their
    weights to bf16 for every matmul anyway, so the log-probs are bit for bit the same, and the copy
    holds half the bytes (the demo model: 0.2 GB less). Embeddings (and a head tied to them) and
    norms keep their precision: autocast does not round those.
    """

    def __init__(self, frozen=None, bf16: bool = False):
        if frozen is not None and bf16:
            _store_linear_layers_in_bf16(frozen)
        self.frozen = CompletionScorer(frozen).eval().requires_grad_(False) if frozen is not None else None
        self.bf16 = bf16

    def __call__(self, policy_lm, batch: dict) -> dict[str, torch.Tensor]:
        """{"ref_chosen_logps", "ref_rejected_logps"} of a collated pair batch; `policy_lm` is the
        training LM, unwrapped (used only with LoRA)."""
        ids, mask, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        with torch.no_grad(), torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.frozen is not None:
                logps, _ = self.frozen.to(ids.device)(ids, mask, completion)
            else:
                with policy_lm.disable_adapter():
                    logps, _ = completion_logps(policy_lm, ids, mask, completion)
        chosen, rejected = logps.detach().float().chunk(2)  # collate: the B chosen rows, then the B rejected
        return {"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}


def _store_linear_layers_in_bf16(model) -> None:
    """Cast each nn.Linear of `model` to bf16, except one whose weight an embedding shares (a tied
    head): the embedding lookup is not autocast, so its values must stay as they are."""
    shared = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in shared:
            module.to(torch.bfloat16)


def load_or_compute(
    cache_dir: Path, key: dict, compute, elsewhere: list[Path] = ()
) -> tuple[list[float], list[float], dict]:
    """Cached reference log-probs for `key`, or `compute()`'s, which are then cached.

    `elsewhere`: finished model folders whose cache may hold the same key (an ablation trained
    from the same pairs as M_T); a match is copied in rather than recomputed.
    """
    table, meta = cache_dir / "ref_logps.parquet", cache_dir / "ref_logps.json"
    if distributed.is_main() and (_stored(cache_dir) or {}).get("key") != key:
        source = next((f for f in elsewhere if (_stored(f) or {}).get("key") == key), None)
        if source is not None:
            log.info("reference log-probs: the same pairs and reference were scored for %s; reusing them", source)
            shutil.copy2(source / table.name, table)
            shutil.copy2(source / meta.name, meta)  # last: a cache is only ever read with its key
    distributed.barrier()  # every process reads what the main one found
    stored = _stored(cache_dir)
    if stored is not None:
        frame = _cached_table(table, stored) if stored.get("key") == key else None
        if frame is not None:
            log.info("reference log-probs: reusing %s", table)
            return frame["ref_chosen_logps"].to_list(), frame["ref_rejected_logps"].to_list(), stored
        if frame is None and stored.get("key") != key:
            changed = sorted(k for k in key if (stored.get("key") or {}).get(k) != key[k])
            log.info("reference log-probs in %s are stale (%s changed); recomputing", table, ", ".join(changed))
    chosen, rejected, tokens_per_s = compute()  # every process takes part
    stored = {"key": key, "tokens_per_s": round(tokens_per_s, 1), "pairs": len(chosen)}
    if distributed.is_main():
        import polars as pl  # here: the trainer's step code runs where polars is not installed (bench/gpu_train.py)

        write_parquet_atomic(pl.DataFrame({"ref_chosen_logps": chosen, "ref_rejected_logps": rejected}), table)
        write_json_atomic(meta, stored)
    return chosen, rejected, stored


def _stored(folder: Path) -> dict | None:
    """The cache record (key, speed) of `folder`'s reference log-probs, if both files are there and it
    reads; an unreadable one is no cache (it is computed again, with a warning), never an error."""
    meta = folder / "ref_logps.json"
    if not (meta.is_file() and (folder / "ref_logps.parquet").is_file()):
        return None
    try:
        return read_json(meta)
    except RecordError as exc:
        log.warning("%s; computing the reference log-probs again", exc)
        return None


def _cached_table(table: Path, stored: dict):
    """The cached log-probs, or None (with a warning) when the table cannot be read or is not the pairs' size."""
    try:
        import polars as pl

        frame = read_parquet(table, {"ref_chosen_logps": pl.Float64, "ref_rejected_logps": pl.Float64})
    except RecordError as exc:
        log.warning("%s; computing the reference log-probs again", exc)
        return None
    if frame.height != stored.get("pairs", frame.height):
        log.warning("%s has %d rows for %s pairs; computing them again", table, frame.height, stored.get("pairs"))
        return None
    return frame
