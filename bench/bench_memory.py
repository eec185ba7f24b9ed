"""Memory a training leaves behind and its peaks: with irpo's heap trims, against without them.

    python bench/bench_memory.py --runs-dir RUNS [CARD_OVERRIDES ...]

RUNS must hold a built iteration 1 of the demo card with those overrides, e.g. (~1 minute of
sampling on 2 cores, the demo's lengths at small counts):

    irpo data build --runs-dir /tmp/memrun task.max_questions=16 task.held_out=16 sampling.num_samples=4
    python bench/bench_memory.py --runs-dir /tmp/memrun task.max_questions=16 task.held_out=16 \\
        sampling.num_samples=4 train.max_steps=8 train.select_every=8 train.probe_every=4

Each mode trains the DPO ablation (models/M_1-dpo, the selection run and the retrain) from the
same pairs in a fresh process, so that its maximum RSS is its own:
- baseline: `release_memory` and the per-step `TrimHeap` switched off (gc alone, as before);
- irpo: as shipped.
Rows: each run's peak (from the training record's per-phase peaks), the process's maximum RSS, and
its resident memory once `train_iteration` has returned (what `irpo run`'s next stage runs
beside). Target: after a training, the process holds under 1.5 GB more than before it.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def one_mode(mode: str, runs_dir: str, overrides: list[str]) -> dict:
    import psutil

    import irpo_train.train as train
    import irpo_train.trainer as trainer
    from irpo.card_loader import load_card

    if mode == "baseline":
        import gc

        train.release_memory = gc.collect
        trainer.TrimHeap.on_step_end = lambda *args, **kwargs: None
    card = load_card("demo", overrides)
    models = Path(runs_dir) / card.name / "models"
    for name in ("M_1-dpo", "M_1-dpo.work"):
        shutil.rmtree(models / name, ignore_errors=True)
    process = psutil.Process()
    before = process.memory_info().rss
    start = time.perf_counter()
    train.train_iteration(card, 1, runs_dir, progress=False, ablation="dpo")
    peaks = json.loads((models / "M_1-dpo" / "train_manifest.json").read_text())["timings"]["peak_gb"]
    return {
        "mode": mode,
        "seconds": time.perf_counter() - start,
        "select_peak_gb": peaks.get("select run"),
        "retrain_peak_gb": peaks.get("retrain run"),
        "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "held_after_gb": (process.memory_info().rss - before) / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", required=True)
    parser.add_argument("--mode", choices=("baseline", "irpo"), help=argparse.SUPPRESS)  # one child process
    args, overrides = parser.parse_known_args()
    if args.mode:
        print(json.dumps(one_mode(args.mode, args.runs_dir, overrides)))
        return
    rows = []
    for mode in ("baseline", "irpo"):
        done = subprocess.run(
            [sys.executable, __file__, "--runs-dir", args.runs_dir, "--mode", mode, *overrides],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sys.exit(f"the {mode} run failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"{'mode':10} {'select peak GB':>15} {'retrain peak GB':>16} {'max RSS GB':>11} {'held after GB':>14} {'s':>6}"
    )
    for r in rows:
        print(
            f"{r['mode']:10} {r['select_peak_gb']:>15} {r['retrain_peak_gb']:>16} {r['max_rss_gb']:>11.2f} "
            f"{r['held_after_gb']:>14.2f} {r['seconds']:>6.0f}"
        )
    held = rows[1]["held_after_gb"]
    print(f"held after training: {held:.2f} GB (target < 1.5 GB; baseline {rows[0]['held_after_gb']:.2f} GB)")
    print(json.dumps({"bench": "memory", "rows": rows}))


if __name__ == "__main__":
    main()
