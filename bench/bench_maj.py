"""maj@k wall time: our irpo-vllm backend (one request with n=k per question) vs lm-eval's own
vLLM backend (`repeats`: k identical requests per question), same model, questions, k and task.

    python bench/bench_maj.py [--task demo] [--k 32] [--limit 16] [--max-new-tokens 160] [--data-dir DIR]

Each backend runs irpo-eval's maj@k evaluation (greedy + k samples per question, graded by
irpo.grading) in its own fresh process, one after the other, so neither inherits the
other's threads or caches; the wall time includes loading the engine. Printed: wall time,
speed-up, and the accuracy of both (they sample differently, so they agree only within
sampling noise; the standard error of maj@k is shown). Target: >= 2x at k = 32.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time


def one(args) -> None:
    from irpo.card_loader import load_card
    from irpo.models import resolve_model
    from irpo_eval.evaluate import EvalSettings, evaluate_model

    overrides = [
        f"task.name={args.task}",
        f"eval.maj_k={args.k}",
        f"eval.limit={args.limit}",
        f"eval.max_new_tokens={args.max_new_tokens}",
        "eval.temperature=0.8",
        f"eval.backend={args.one}",
    ]
    if args.data_dir:
        overrides.append(f"task.data_dir={args.data_dir}")
    card = load_card("demo", overrides)
    settings = EvalSettings.from_card(card)
    model = resolve_model(card.model.base)
    start = time.perf_counter()
    record = evaluate_model(model, settings).to_dict()
    record["wall_s"] = time.perf_counter() - start
    names = ("wall_s", "questions", "greedy", "maj_at_k", "pass_at_k", "sample_accuracy")
    print("RESULT " + json.dumps({k: record[k] for k in names}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="demo")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one backend
    args = parser.parse_args()
    if args.one:
        return one(args)

    results = {}
    for backend in ("vllm", "irpo-vllm"):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            backend,
            "--task",
            args.task,
            "--k",
            str(args.k),
            "--limit",
            str(args.limit),
            "--max-new-tokens",
            str(args.max_new_tokens),
        ] + (["--data-dir", args.data_dir] if args.data_dir else [])
        print(f"running {backend} ...", file=sys.stderr, flush=True)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[backend] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])

    base, ours = results["vllm"], results["irpo-vllm"]
    n = ours["questions"]
    print(
        f"\nmaj@{args.k} on {args.task}, {n} questions, {args.max_new_tokens} new tokens max, demo model "
        "(SmolLM2-135M)\n"
    )
    print("| backend | wall s | greedy | maj@k | pass@k | sample accuracy |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in (("lm-eval vllm, repeats (baseline)", base), ("irpo-vllm, n=k", ours)):
        print(
            f"| {name} | {r['wall_s']:.1f} | {100 * r['greedy']:.1f} | {100 * r['maj_at_k']:.1f} | "
            f"{100 * r['pass_at_k']:.1f} | {100 * r['sample_accuracy']:.1f} |"
        )
    stderr = 100 * math.sqrt(max(ours["maj_at_k"] * (1 - ours["maj_at_k"]), 1e-9) / n)
    speedup = base["wall_s"] / ours["wall_s"]
    print(
        f"\nspeed-up: {speedup:.2f}x (target >= 2x); maj@k differs by "
        f"{100 * abs(ours['maj_at_k'] - base['maj_at_k']):.1f} points "
        f"(standard error of one maj@k: {stderr:.1f})"
    )


if __name__ == "__main__":
    main()
