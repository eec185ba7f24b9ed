"""The shape of the library, as issue 33 measures it: modules and lines per package, the largest
module, functions over 50 lines, and imports inside functions (with the heavy libraries apart).

    python bench/layout_stats.py            # a table; --list also names each long function and late import

Lines are physical lines of the .py files (docstrings and comments included). An import inside a
function is "heavy" when it loads one of the libraries that must stay out of `irpo --help` and the
`irpo run` parent (torch, transformers, vllm, lm_eval, peft, ray, matplotlib, datasets, ...).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "irpo": "irpo",
    "irpo_run": "irpo_run",
    "irpo_data": "irpo_data",
    "irpo_train": "irpo_train",
    "irpo_eval": "evals",
}
HEAVY = {
    "torch", "transformers", "vllm", "lm_eval", "peft", "ray", "matplotlib", "datasets", "accelerate",
    "huggingface_hub", "math_verify", "polars", "pyarrow", "numpy", "gguf", "tqdm", "psutil",
}  # fmt: skip
LONG = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="name each long function and each light late import")
    args = parser.parse_args()
    rows, long_functions, late_light = [], [], []
    largest = ("", 0)
    totals = [0, 0, 0, 0, 0]
    for package, folder in PACKAGES.items():
        files = sorted((ROOT / folder).rglob("*.py"))
        lines = late = heavy = long = 0
        for path in files:
            text = path.read_text()
            count = len(text.splitlines())
            lines += count
            name = str(path.relative_to(ROOT))
            largest = max(largest, (name, count), key=lambda item: item[1])
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > LONG:
                        long += 1
                        long_functions.append(f"{name}:{node.lineno} {node.name} ({length} lines)")
                    for inner in ast.walk(node):
                        if isinstance(inner, (ast.Import, ast.ImportFrom)):
                            module = inner.module if isinstance(inner, ast.ImportFrom) else inner.names[0].name
                            late += 1
                            if (module or "").split(".")[0] in HEAVY:
                                heavy += 1
                            else:
                                late_light.append(f"{name}:{inner.lineno} {module} (in {node.name})")
        rows.append((package, len(files), lines, long, late, heavy))
        totals = [t + v for t, v in zip(totals, (len(files), lines, long, late, heavy))]
    print("| package | modules | lines | functions > 50 lines | imports inside functions | of them heavy libraries |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for package, *values in rows:
        print(f"| {package} | " + " | ".join(f"{v:,}" for v in values) + " |")
    print("| all | " + " | ".join(f"{v:,}" for v in totals) + " |")
    print(f"\nlargest module: {largest[0]} ({largest[1]:,} lines)")
    if args.list:
        print("\nfunctions over 50 lines:\n  " + "\n  ".join(long_functions))
        print("\nimports inside functions, not of a heavy library:\n  " + "\n  ".join(late_light))


if __name__ == "__main__":
    main()
