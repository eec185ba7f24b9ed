"""The DPO+NLL trainer: one small `transformers.Trainer` subclass and its callbacks.

Everything a Trainer gives stays ours: accelerate (torchrun / accelerate launch with DDP, FSDP2,
DeepSpeed), bf16, gradient accumulation, `report_to`, checkpoints and resume. That holds because
the model the Trainer wraps is irpo_train.scorer.CompletionScorer, whose forward scores the batch
(the scorer's docstring says why that matters). This file adds:
- `DPONLLTrainer.compute_loss`: policy log-probs of the batch's chosen and rejected answers
  (one forward over 2B sequences; B chosen ones for the SFT objectives), cached reference
  log-probs from the batch, the pure loss of train.objective (loss.objective_loss); checkpoints
  and saved models are the LM's own transformers folder, gathered to full weights under FSDP2
  and ZeRO-3 (`save_full_model`);
- `HeldOutAccuracy` (train.select_with=trainer): greedy accuracy on the card's held-out training
  questions every `select_every` steps, keeping the best model (the paper's checkpoint choice)
  and why; irpo_train.candidates does the same on vLLM (train.select_with=vllm);
- `MetricsFile`: every logged step as one JSON line (loss, dpo, nll, rewards, log-probs);
- `ProbeLogps`: log-probs of a fixed sample of training pairs, followed through training;
- `ProgressWithLoss`: the progress bar shows the loss.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from irpo import timing
from irpo.grading import grade
from irpo.hardware import trim_heap
from irpo.prompts import context_left, left_padded, stopped
from irpo.reading import read_json, read_jsonl
from irpo.runs import atomic_dir, write_json_atomic, write_text_atomic
from irpo.tasks import Task
from irpo.tracking import Tracker
from irpo_train import distributed
from irpo_train.loss import objective_loss
from irpo_train.reference import reference_logps
from irpo_train.scorer import language_model

log = logging.getLogger(__name__)


class DPONLLTrainer(Trainer):
    """Trains any train.objective; the default and the reason for this class is DPO + NLL.

    `model` is a CompletionScorer (irpo_train.scorer): the Trainer wraps it for DDP, FSDP2 or
    ZeRO-3, and its forward scores the batch, so every strategy syncs what it must. Checkpoints
    and saved models are the LM inside it, as a plain transformers folder.
    """

    def __init__(
        self,
        *args,
        beta: float,
        alpha: float,
        objective: str = "dpo_nll",
        reference=None,
        in_order: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.beta, self.alpha, self.objective = beta, alpha, objective
        # A semi-online slice's rows come in the order they are trained in, already shuffled and cut to its
        # steps (irpo_train.train_slice): read in order, whatever step the run resumes at.
        self.in_order = in_order
        # irpo_train.reference.StepReference (train.reference_logps=per_step), or None: the batches
        # carry precomputed reference log-probs (or the objective needs none).
        self.reference = reference
        self._parts: list[dict[str, torch.Tensor]] = []

    def _get_train_sampler(self, train_dataset=None):
        if self.in_order:
            return torch.utils.data.SequentialSampler(
                train_dataset if train_dataset is not None else self.train_dataset
            )
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.reference is not None:
            with timing.phase("reference per step"):
                policy_lm = language_model(self.accelerator.unwrap_model(model, keep_torch_compile=False))
                inputs = {**inputs, **self.reference(policy_lm, inputs)}
        logps, lengths = model(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
        loss, parts = objective_loss(self.objective, logps, lengths, inputs, beta=self.beta, alpha=self.alpha)
        self._parts.append(parts)
        return (loss, {"logps": logps}) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        # The Trainer logs the loss averaged since the last log and over the processes (every
        # process calls log); do the same for the parts.
        if self._parts and "loss" in logs:
            names = list(self._parts[0])
            means = torch.stack([torch.stack([p[n] for p in self._parts]).mean() for n in names]).detach()
            means = self.accelerator.reduce(means.to(self.args.device), reduction="mean")  # over processes
            logs.update({name: round(value, 6) for name, value in zip(names, means.tolist())})
            self._parts.clear()
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        with timing.phase("checkpoints"):  # weights, optimizer and scheduler state
            super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """A checkpoint is the LM's own folder (config, weights), not the scorer's state dict."""
        output_dir = output_dir or self.args.output_dir
        if state_dict is not None:  # gathered by FSDP or ZeRO-3 from the scorer
            state_dict = _lm_keys(state_dict)
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            self._language_model().save_pretrained(output_dir, state_dict=state_dict)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = model if model is not None else self.model
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:  # their loaders take the wrapped model
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        return super()._load_from_checkpoint(resume_from_checkpoint, language_model(model))

    def save_full_model(self, folder: Path, tokenizer=None) -> None:
        """The LM's full weights (and `tokenizer`) into `folder`, replacing it. Every process calls
        it; the main one writes.

        Under FSDP2 and ZeRO-3 each process holds a shard: the full state dict is gathered first
        (accelerate's FSDP2 default is a sharded state dict, which `save_pretrained` would write
        as nothing, so the files are checked).
        """
        state = None
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            state = _lm_keys(
                self.accelerator.get_state_dict(self.deepspeed if self.is_deepspeed_enabled else self.model) or {}
            )
        if self.args.should_save:
            with atomic_dir(folder, replace=True) as tmp:  # its own work in progress: best/, last/, step-N/
                self._language_model().save_pretrained(tmp, state_dict=state)
                if tokenizer is not None:  # a folder an engine can load on its own
                    tokenizer.save_pretrained(tmp)
                if not any((tmp / name).is_file() for name in WEIGHT_FILES):
                    raise RuntimeError(
                        f"saving {folder} wrote no weights; with FSDP use an accelerate config with "
                        "fsdp_state_dict_type: FULL_STATE_DICT (cards/accelerate/fsdp2.yaml)"
                    )
        distributed.barrier()

    def _language_model(self):
        return language_model(self.accelerator.unwrap_model(self.model, keep_torch_compile=False))


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


def _lm_keys(state_dict: dict) -> dict:
    """A CompletionScorer's state dict keyed as the LM's own ("lm.model.norm.weight" -> "model.norm.weight")."""
    return {key.removeprefix("lm."): value for key, value in state_dict.items()}


class ProgressWithLoss(ProgressCallback):
    """The Trainer's progress bar (steps, ETA) with the latest loss, dpo, nll and reward accuracy
    in it, instead of one printed dict per step (every step is in metrics.jsonl)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            shown = {k: f"{logs[k]:.3g}" for k in ("loss", "dpo", "nll", "reward_accuracy") if k in logs}
            self.training_bar.set_postfix(shown, refresh=False)


class MetricsFile(TrainerCallback):
    """Append each training log (one per `logging_steps`) to metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        # After a resume, drop lines from steps that will be trained again.
        if state.is_world_process_zero and self.path.is_file():
            kept = [row for row in read_jsonl(self.path) if row.get("step", 0) <= state.global_step]
            write_text_atomic(self.path, "".join(json.dumps(row) + "\n" for row in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class TrackerLogs(TrainerCallback):
    """Each training log into the run's trackers (irpo.tracking), on this run's own step axis."""

    def __init__(self, tracker: Tracker, prefix: str):
        self.tracker, self.prefix = tracker, prefix  # e.g. train/M_1/select

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            metrics = {f"{self.prefix}/{k}": v for k, v in logs.items()}
            self.tracker.log(metrics, state.global_step, axis=f"{self.prefix}/step")


class TrimHeap(TrainerCallback):
    """After each optimiser step (and the checks and probe that follow it): the step's freed
    activations back to the system, so that batches of other lengths do not grow the process.

    Added last, so that it runs after the other callbacks' on_step_end. Measured at the demo card's
    lengths (8 + 8 steps, bf16 autocast): between steps the process holds 3.3 GB instead of 5.4,
    its peak is 5.55 GB instead of 5.73, and the steps take as long (BENCHMARKS.md, "Memory").
    """

    def on_step_end(self, args, state, control, **kwargs):
        trim_heap()


class NoFinalCheckpoint(TrainerCallback):
    """No resume checkpoint at the last step: the phase saves its model right after the run (best/ or
    last/) and then marks itself done, so that checkpoint would only be written and deleted.

    The Trainer saves one at max_steps whatever save_steps says; each is the model and its Adam
    state (1.6 GB for the demo model, ~3 s on 2 CPU cores, once per training phase). Not for runs
    whose candidates are scored on vLLM after training: a kill while scoring would then resume from
    the checkpoint before and train the last save_every steps again.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False


PROBE_BATCH_SIZE = 8  # pairs per forward of a probe measurement


class ProbeLogps(TrainerCallback):
    """Change of log M(y|x) against the reference on the same training pairs, every `every` steps.

    This is the paper's likelihood figure. The per-step metrics cannot show it: each step logs
    the batch it is about to train on, pairs the model has not seen yet, so they measure how
    training generalises to new pairs rather than what it does to the pairs it trains on. The
    probe is a fixed, seeded sample of the training pairs (some trained on early, some late,
    some not yet); one JSON line per measurement goes to probe.jsonl.
    """

    def __init__(
        self,
        rows: list[dict],
        *,
        every: int,
        pad_token_id: int,
        path: Path,
        bf16: bool,
        batch_size: int = PROBE_BATCH_SIZE,
        zero_at_start: bool = False,
    ):
        self.rows = rows  # pairs with their reference log-probs, chosen by probe_indices
        self.every, self.pad_token_id, self.path, self.bf16, self.batch_size = (
            every,
            pad_token_id,
            path,
            bf16,
            batch_size,
        )
        # The rows' reference log-probs came from this very measurement of M_{T-1} (same function,
        # batches and autocast: train.reference_logps=per_step), so step 0 is zero by construction
        # and is written without a pass.
        self.zero_at_start = zero_at_start

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        done = read_jsonl(self.path)
        kept = [d for d in done if d.get("step", 0) <= state.global_step]  # after a resume: steps trained again go
        distributed.barrier()  # every process has read the file before the main one rewrites it
        if state.is_world_process_zero:
            write_text_atomic(self.path, "".join(json.dumps(d) + "\n" for d in kept))
        if kept:
            return
        if self.zero_at_start:
            self._write(
                {"step": 0, "pairs": len(self.rows), "chosen_change": 0.0, "rejected_change": 0.0, "chosen_rose": 0.0}
            )
        else:
            self._measure(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._measure(model, state.global_step)

    def _write(self, line: dict) -> None:
        if distributed.is_main():
            with self.path.open("a") as handle:
                handle.write(json.dumps(line) + "\n")

    def _measure(self, model, step: int) -> None:
        """Every process measures (the pass is split over them); the main one writes the line."""
        with timing.phase("probe"):
            self._measure_timed(model, step)

    def _measure_timed(self, model, step: int) -> None:
        was_training = model.training
        try:
            # The reference pass's own function: same batching and autocast, no gradients.
            policy_chosen, policy_rejected, _ = reference_logps(
                model, self.rows, self.pad_token_id, self.batch_size, False, self.bf16
            )
        finally:
            model.train(was_training)
        chosen = [p - r["ref_chosen_logps"] for p, r in zip(policy_chosen, self.rows)]
        rejected = [p - r["ref_rejected_logps"] for p, r in zip(policy_rejected, self.rows)]
        self._write(
            {
                "step": step,
                "pairs": len(chosen),
                "chosen_change": sum(chosen) / len(chosen),
                "rejected_change": sum(rejected) / len(rejected),
                "chosen_rose": sum(c > 0 for c in chosen) / len(chosen),  # fraction of winners above the reference
            }
        )


def probe_indices(pairs: int, count: int, seed: int) -> list[int]:
    """The probe's pairs: a seeded sample, the same for every objective trained on these pairs."""
    return sorted(random.Random(seed).sample(range(pairs), min(count, pairs)))


@dataclass(frozen=True)
class HeldOutQuestions:
    """What the checkpoint choice scores: the questions, their prompts as the build recorded their ids
    (iter_T/questions.parquet), and how to generate (the model's stop tokens, a plain prompt's stop strings)."""

    task: Task
    questions: list  # irpo.tasks.Question
    prompt_ids: list[list[int]]
    tokenizer: object
    max_new_tokens: int | None  # None: up to the model's context
    batch_size: int = 16
    bf16: bool = False
    stop_token_ids: tuple[int, ...] = ()  # () = the tokenizer's EOS
    stop_strings: tuple[str, ...] = ()
    max_model_len: int | None = None  # the context a null max_new_tokens generates up to (sampling.max_model_len)


class HeldOutAccuracy(TrainerCallback):
    """Greedy accuracy on held-out questions every `every` steps; the best step's model is kept.

    With `baseline`, a check at step 0 records the reference model's accuracy for comparison
    (train.select_baseline); the choice is among trained steps only, as in the paper. `record`
    (checkpoint_choice.json) holds the history and the choice, rewritten after each check, so a
    resumed run keeps both.
    """

    def __init__(self, held_out: HeldOutQuestions, *, every: int, best_dir: Path, record: Path, baseline: bool = True):
        self.held_out, self.every, self.best_dir, self.record = held_out, every, best_dir, record
        self.baseline = baseline
        self.history: list[dict] = read_json(record).get("history", []) if record.is_file() else []
        self.save = None  # DPONLLTrainer.save_full_model, set once the trainer exists

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.history = [h for h in self.history if h["step"] <= state.global_step]
        if self.baseline and not self.history:
            self._evaluate(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._evaluate(model, state.global_step)

    def best(self) -> dict | None:
        return best_step(self.history)

    def _evaluate(self, model, step: int) -> None:
        if any(h["step"] == step for h in self.history):
            return
        with timing.phase("held-out checks"):
            accuracy = held_out_accuracy(language_model(model), self.held_out)
        self.history.append({"step": step, "accuracy": accuracy})
        best = self.best()
        if step > 0 and best is not None and best["step"] == step:
            self.save(self.best_dir)
        if not distributed.is_main():
            return
        log.info(
            "step %d: held-out greedy accuracy %.1f%% (best so far: step %s)",
            step,
            100 * accuracy,
            best and best["step"],
        )
        record = {"history": self.history, "best": best, "questions": len(self.held_out.questions)}
        write_json_atomic(self.record, record)


def best_step(history: list[dict]) -> dict | None:
    """The selected check: highest accuracy, among equals the earliest step (least drift from the
    reference); among trained steps only, as in the paper (step 0 is the reference, for comparison)."""
    trained = [h for h in history if h["step"] > 0]
    return max(trained, key=lambda h: (h["accuracy"], -h["step"])) if trained else None


def held_out_accuracy(model, held_out: HeldOutQuestions) -> float:
    """Greedy accuracy with the model in memory, graded by irpo.grading (the reward's grader).

    Under several processes (DDP: each holds the whole model) each answers every world_size-th
    batch of questions and the counts are summed.
    """
    tokenizer, prompts, questions, batch_size = (
        held_out.tokenizer,
        held_out.prompt_ids,
        held_out.questions,
        held_out.batch_size,
    )
    stops = list(held_out.stop_token_ids) or [tokenizer.eos_token_id]
    was_training = model.training
    model.eval()
    correct = 0
    try:
        with torch.inference_mode(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=held_out.bf16):
            starts = range(0, len(prompts), batch_size)
            for start in starts[distributed.rank() :: distributed.world_size()]:
                input_ids, attention = left_padded(prompts[start : start + batch_size], tokenizer.pad_token_id)
                out = model.generate(
                    input_ids=input_ids.to(model.device),
                    attention_mask=attention.to(model.device),
                    do_sample=False,
                    max_new_tokens=held_out.max_new_tokens or context_left(model, input_ids, held_out.max_model_len),
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=stops,
                    stop_strings=list(held_out.stop_strings) or None,
                    tokenizer=tokenizer if held_out.stop_strings else None,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
                for tokens, question in zip(
                    out[:, input_ids.shape[1] :].tolist(), questions[start : start + batch_size]
                ):
                    answer = stopped(tokens, set(stops), held_out.stop_strings, tokenizer)
                    correct += grade(held_out.task, answer.text, question.gold).correct
    finally:
        model.train(was_training)
    return sum(distributed.all_gather(correct)) / len(prompts)
