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


def test_what_the_readme_cites_is_in_the_repository():
    """Nothing the README or the architecture doc points to lies outside the checkout (a user who
    clones it has no ../shared), and every file or folder they name exists."""
    import re

    for doc in ("README.md", "docs/architecture.md"):
        text = (ROOT / doc).read_text()
        assert "../" not in text, f"{doc} points outside the repository"
        links = re.findall(r"\]\(([^)#]+)\)", text)
        # Source paths (evals/M_t.json and the like are run-folder paths, not the repository's).
        named = re.findall(r"`((?:cards|bench|docs|scripts|tests|irpo\w*)/[\w./-]*|evals/\w+\.(?:py|yaml))`", text)
        named += re.findall(r"\b((?:tests|bench|docs|scripts)/[\w/-]+\.(?:py|sh|md))\b", text)
        placeholders = ("NAME", "M_t", "*")  # irpo/tasks/NAME.py: what a user adds
        cited = [t for t in links if "://" not in t] + [t for t in named if not any(p in t for p in placeholders)]
        for target in cited:
            assert (ROOT / target.split(" ")[0]).exists(), f"{doc} names {target}, which is not in the repository"


def test_the_readme_opens_with_the_two_commands_ci_runs():
    """A newcomer's two commands: set up and run the demo, set up and run the tests (the latter is CI's)."""
    import re

    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks[0].strip() == "bash scripts/setup && .venv/bin/irpo run"
    assert blocks[1].strip() == "bash scripts/setup && IRPO_REQUIRE_VLLM=1 .venv/bin/python -m pytest"
    assert blocks[1].strip() in (ROOT / ".ci" / "run").read_text()
