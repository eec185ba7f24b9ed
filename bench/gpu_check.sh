#!/usr/bin/env bash
# One NVIDIA GPU, no network, under 8 minutes: the embedded demo model through every stage on CUDA.
#
#   bash scripts/setup && bash bench/gpu_check.sh [RUNS_DIR]
#
# Runs iteration 1 of the demo card in bf16 on the GPU: vLLM sampling (build), training with the
# held-out candidates scored on vLLM (train.select_with=vllm), irpo eval of M_0 and M_1 on vLLM.
# Prints one table: each stage's wall time and its tokens/s (from the run's own records).
# It cannot run on the CPU machines this project is developed on; it is kept short and ready.
set -euo pipefail
cd "$(dirname "$0")/.."
IRPO=${IRPO:-.venv/bin/irpo}
PY=${PY:-.venv/bin/python}
RUNS=${1:-$(mktemp -d /tmp/irpo-gpu-check-XXXX)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU: this check is for a GPU machine")'
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

CARD=(name=gpu-check sampling.dtype=bfloat16 train.bf16=true train.select_with=vllm
      task.max_questions=128 eval.limit=100 resources.gpu_memory_utilization=0.5)

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
