#!/usr/bin/env bash
# One NVIDIA GPU, no network, under 8 minutes. Three checks, by what the machine has:
#
#   bash scripts/setup && bash bench/gpu_check.sh [RUNS_DIR]       # the demo model through every stage on CUDA
#   MODEL=/path/to/Qwen2.5-1.5B-Instruct bash bench/gpu_check.sh    # cards/gsm8k_small.yaml, iteration 1, reduced
#   bash bench/gpu_check.sh                                         # no vLLM here: the trainer alone (below)
#
# With vLLM and irpo's dependencies installed: iteration 1 in bf16 on the GPU, vLLM sampling (build),
# training with the held-out candidates scored on vLLM (train.select_with=vllm), irpo eval of M_0 and
# M_1 on vLLM; one table of each stage's wall time and tokens/s (from the run's own records). MODEL is
# a local model folder (nothing can be downloaded there): the gsm8k_small card runs on it, on the 40
# GSM8K rows of tests/assets, at reduced size.
# On a machine with torch, transformers, peft and accelerate but no vLLM (nor polars, datasets,
# math-verify, lm-eval): bench/gpu_train.py, the training step and reference pass of random-weight
# models of 0.5B and 1.5B parameters in bf16, with tokens/s, memory and the share of the GPU's bf16 peak.
# None of it can run on the CPU machines this project is developed on; it is kept short and ready.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
IRPO=${IRPO:-.venv/bin/irpo}
RUNS=${1:-$(mktemp -d /tmp/irpo-gpu-check-XXXX)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU: this check is for a GPU machine")'
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

if ! "$PY" -c 'import vllm, polars, datasets, lm_eval, math_verify' 2>/dev/null; then
    echo "vLLM or irpo's data packages are missing here: checking the trainer alone (bench/gpu_train.py)"
    exec "$PY" bench/gpu_train.py --sizes 0.5b 1.5b
fi

if [ -n "${MODEL:-}" ]; then  # the small card's first iteration on a local model, at reduced size
    CARD=(--card gsm8k_small name=gpu-check "model.base=$MODEL" task.data_dir=tests/assets/gsm8k task.held_out=8
          train.max_steps=40 train.select_every=20 eval.maj_k=4 resources.gpu_memory_utilization=0.5)
else
    CARD=(name=gpu-check sampling.dtype=bfloat16 train.bf16=true train.select_with=vllm
          task.max_questions=128 eval.limit=100 resources.gpu_memory_utilization=0.5)
fi

stage() {  # stage NAME COMMAND...: run it, record its wall time
    local name=$1; shift
    local start=$SECONDS
    "$@" --quiet --runs-dir "$RUNS" "${CARD[@]}"
    echo "$name $((SECONDS - start))" >> "$RUNS/times.txt"
}
: > "$RUNS/times.txt" 2>/dev/null || { mkdir -p "$RUNS"; : > "$RUNS/times.txt"; }
stage build "$IRPO" data build --iter 1
stage train "$IRPO" train --iter 1
stage eval "$IRPO" eval

"$PY" - "$RUNS" <<'PY'
import json, sys
from pathlib import Path

runs = Path(sys.argv[1])
run = runs / "gpu-check"
times = dict(line.split() for line in (runs / "times.txt").read_text().splitlines())
build = json.loads((run / "iter_1" / "manifest.json").read_text())
train = json.loads((run / "models" / "M_1" / "train_manifest.json").read_text())
choice = json.loads((run / "models" / "M_1" / "checkpoint_choice.json").read_text())
evals = {p.stem: json.loads(p.read_text()) for p in (run / "evals").glob("M_*.json")}
rows = [
    ("build (vLLM sampling + grading + pairs)", times["build"], f"{build.get('sampling_tokens_per_s')} tok/s sampling"),
    ("train (reference pass, steps, candidates on vLLM, retrain)", times["train"],
     f"{train.get('reference_tokens_per_s')} tok/s reference; step {train.get('chosen_step')} of "
     f"{[h['step'] for h in choice['history']]}"),
    ("eval (M_0 and M_1, greedy + maj@k on vLLM)", times["eval"],
     ", ".join(f"{k} greedy {100 * v['greedy']:.1f}%, maj@{v['maj_k']} {100 * v['maj_at_k']:.1f}%"
               for k, v in sorted(evals.items()))),
]
width = max(len(r[0]) for r in rows)
print(f"\n{'stage':<{width}}  {'seconds':>7}  notes")
for what, seconds, notes in rows:
    print(f"{what:<{width}}  {seconds:>7}  {notes}")
print(f"total {sum(int(t) for t in times.values())} s; run folder {run}")
PY
