"""irpo installs from a wheel, not only in editable mode: every package and the data files it ships
(cards, lm-eval task YAMLs and their templates) are in the wheel, and import from it."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Run from the unpacked wheel, in a folder outside the checkout: imports resolve to the wheel's files
# (the editable install's finder comes after the path), which the script checks for each module.
CHECK = r"""
import importlib, json, pkgutil, sys
from pathlib import Path
wheel = Path(sys.argv[1])
modules = []
for package in ("irpo", "irpo_run", "irpo_data", "irpo_train", "irpo_eval", "irpo_cards"):
    module = importlib.import_module(package)
    modules.append(module)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        if info.name != "irpo_eval.lm_eval_cli":  # runs lm-eval's command line on import
            modules.append(importlib.import_module(info.name))
outside = [m.__name__ for m in modules if not Path(m.__file__).resolve().is_relative_to(wheel.resolve())]
from irpo.card_loader import BUNDLED_CARDS, load_card
from irpo_eval.task_yamls import TASKS_DIR, stale_yamls
from lm_eval.tasks import TaskManager
indexed = TaskManager(include_path=str(TASKS_DIR), include_defaults=False).all_tasks
print(json.dumps({
    "modules": len(modules), "outside": outside, "cards": list(BUNDLED_CARDS),
    "gsm8k": load_card("gsm8k").task.name, "stale_yamls": [str(p) for p in stale_yamls()],
    "tasks_dir": str(TASKS_DIR), "indexed": sorted(t for t in indexed if t.startswith("irpo_")),
}))
"""


@pytest.mark.slow  # builds the wheel and imports every module from it (torch, transformers, lm-eval)
def test_the_wheel_holds_every_package_and_its_data(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel_file,) = tmp_path.glob("irpo-*.whl")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel_file) as archive:
        archive.extractall(unpacked)
        names = archive.namelist()
    assert {"irpo_eval/_irpo_template_yaml", "irpo_eval/_irpo_maj_template_yaml", "irpo_cards/demo.yaml"} <= set(names)
    assert not [n for n in names if n.startswith("tests/")]
    result = subprocess.run(
        [sys.executable, "-c", CHECK, str(unpacked)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(unpacked), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["outside"] == [] and found["modules"] > 50
    assert Path(found["tasks_dir"]).is_relative_to(unpacked)
    assert found["gsm8k"] == "gsm8k" and "demo" in found["cards"] and found["stale_yamls"] == []
    for task in ("arc_challenge", "demo", "gsm8k", "math"):
        assert {f"irpo_{task}", f"irpo_{task}_maj"} <= set(found["indexed"])
