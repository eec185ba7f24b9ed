"""Checkpoint choice on the inference engine: save candidates while training, score them with vLLM after.

With train.select_with=vllm the selection run does not generate inside the training processes
(under FSDP or ZeRO-3 every decode step would gather every layer; for a 70B chain of thought that
is hours). It saves the model every select_every steps as a candidate (full weights, written by
the main process), and when the run ends each candidate answers the held-out questions greedily
on vLLM, with the card's sampling engine settings (tensor parallelism included). The record
(checkpoint_choice.json, the same as the in-trainer check writes) is rewritten after each
candidate, so a kill loses at most the one being scored; the best candidate becomes best/ and
the others are deleted.

    work/select/candidates/step-8/   a transformers folder per candidate, until it is scored
    work/select/best/                the winner
    work/select/checkpoint_choice.json

One engine start per candidate: vLLM offers no stable way to load new weights into a running
engine for every model class, and on a GPU its start (~30-60 s) is small beside a held-out pass of
1,000 chains of thought. Step 0, the reference M_{T-1}, is scored first, for comparison only.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from transformers import TrainerCallback

from irpo import timing
from irpo.engines import SamplingParams
from irpo.grading import grade
from irpo.reading import read_json
from irpo.runs import CHECKPOINT_CHOICE, write_json_atomic
from irpo_train.trainer import best_step

log = logging.getLogger(__name__)


class SaveCandidates(TrainerCallback):
    """Saves the model every `every` steps (and at the last) into `folder`/step-N, with the tokenizer
    (vLLM loads the folder as a model of its own); every process calls it."""

    def __init__(self, folder: Path, every: int, tokenizer):
        self.folder, self.every, self.tokenizer = folder, every, tokenizer
        self.save = None  # DPONLLTrainer.save_full_model, set once the trainer exists

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            with timing.phase("candidate saves"):
                self.save(self.folder / f"step-{state.global_step}", tokenizer=self.tokenizer)


def choose_candidate(
    phase_dir: Path, reference_path: Path, held_out, engine_factory, *, baseline: bool = True
) -> dict | None:
    """Score every candidate in phase_dir/candidates (and, with `baseline`, the reference as step 0,
    for comparison); keep the best as phase_dir/best.

    `held_out`: irpo_train.trainer.HeldOutQuestions; `engine_factory(path)`: a started-on-demand
    engine (irpo.engines.VLLMEngine). Returns the best trained step's record, as
    HeldOutAccuracy.best() does (highest accuracy, earliest step among ties).
    """
    record_path = phase_dir / CHECKPOINT_CHOICE
    history = read_json(record_path).get("history", []) if record_path.is_file() else []
    candidates = sorted(
        (int(p.name.removeprefix("step-")), p) for p in (phase_dir / "candidates").glob("step-*") if p.is_dir()
    )
    for step, folder in candidates:  # scored before a kill, not yet moved: settle them first
        if any(h["step"] == step for h in history):
            _settle(phase_dir, step, folder, best_step(history))
    done = {h["step"] for h in history}
    to_score = ([(0, reference_path)] if baseline and 0 not in done else []) + [
        (s, p) for s, p in candidates if s not in done
    ]
    for step, folder in to_score:
        accuracy = candidate_accuracy(engine_factory(folder), held_out)
        history.append({"step": step, "accuracy": accuracy})
        best = best_step(history)
        # The record first: a kill after it leaves the candidate to be settled on the rerun.
        write_json_atomic(record_path, {"history": history, "best": best, "questions": len(held_out.questions)})
        if step > 0:
            _settle(phase_dir, step, folder, best)
        log.info(
            "step %d: held-out greedy accuracy %.1f%% on vLLM (best so far: step %s)",
            step,
            100 * accuracy,
            best and best["step"],
        )
    shutil.rmtree(phase_dir / "candidates", ignore_errors=True)
    best = best_step(history)
    record = {"history": history, "best": best, "questions": len(held_out.questions), "complete": True}
    write_json_atomic(record_path, record)  # "complete": the other training processes wait for it
    return best


def candidate_accuracy(engine, held_out) -> float:
    """Greedy accuracy of one engine's model on the held-out prompts, graded by the reward's grader."""

    params = SamplingParams(
        num_samples=1,
        temperature=0.0,
        top_p=1.0,
        max_new_tokens=held_out.max_new_tokens,
        seed=0,
        stop_token_ids=held_out.stop_token_ids,
        stop=held_out.stop_strings,
    )
    try:
        outputs = engine.generate(held_out.prompt_ids, params, [0] * len(held_out.prompt_ids))
    finally:
        engine.close()  # one engine alive at a time: free its memory (weights, KV cache) before the next starts
    correct = sum(
        grade(held_out.task, answers[0].text, question.gold).correct
        for answers, question in zip(outputs, held_out.questions)
    )
    return correct / len(held_out.questions)


def _settle(phase_dir: Path, step: int, folder: Path, best: dict | None) -> None:
    """A scored candidate becomes best/ if it leads, else it is deleted (candidates are large)."""
    if best is not None and best["step"] == step:
        shutil.rmtree(phase_dir / "best", ignore_errors=True)
        folder.rename(phase_dir / "best")
    else:
        shutil.rmtree(folder)
