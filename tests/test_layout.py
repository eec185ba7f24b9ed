"""The layout shows the architecture (docs/architecture.md): a ground floor, stages beside each other,
the command on top. Checked on the source itself, so a new import that crosses a wall fails here.

    irpo/        the ground: card, run folder, records, tasks, grading, engines, Hub, CLI boundary
    irpo_data/   build        irpo_train/  train        evals/ (irpo_eval)  evaluate
    irpo_run/    the `irpo` command and the loop: the one package that imports the stages
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "irpo": "irpo",
    "irpo_data": "irpo_data",
    "irpo_train": "irpo_train",
    "irpo_eval": "evals",
    "irpo_run": "irpo_run",
}
STAGES = ("irpo_data", "irpo_train", "irpo_eval")
# What each package may import of irpo's own packages.
ALLOWED = {
    "irpo": {"irpo"},
    "irpo_data": {"irpo", "irpo_data", "irpo_cards"},
    "irpo_train": {"irpo", "irpo_train"},
    "irpo_eval": {"irpo", "irpo_eval"},
    "irpo_run": {"irpo", "irpo_run", *STAGES},
}


def _imports(package: str) -> list[tuple[str, str]]:
    """(file:line, imported top-level package) for every import of an irpo package in `package`'s folder."""
    found = []
    for path in sorted((ROOT / FOLDERS[package]).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in FOLDERS or top == "irpo_cards":
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", top))
    return found


@pytest.mark.parametrize("package", list(FOLDERS))
def test_no_import_crosses_a_wall(package):
    """The ground imports no stage; no stage imports another; only irpo_run imports the stages."""
    crossing = [f"{where} imports {top}" for where, top in _imports(package) if top not in ALLOWED[package]]
    assert crossing == []


def test_the_command_and_the_loop_never_import_torch():
    """`irpo --help` and the `irpo run` parent process stay small: each stage's memory is its own process's."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "import irpo_run.cli, irpo_run.loop, irpo_run.summary, irpo_run.pushes\n"
        "assert CliRunner().invoke(irpo_run.cli.main, ['--help']).exit_code == 0\n"
        "heavy = sorted({'torch', 'transformers', 'vllm', 'lm_eval', 'datasets'} & set(sys.modules))\n"
        "print(heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
