"""`irpo` as one command: every subcommand has help with an example, takes --card, overrides and
--dry-run, and answers bad input with one line; the old entry points are the same commands."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from irpo_data.cli import main as irpo_data
from irpo_eval.cli import main as irpo_eval
from irpo_run.cli import main
from irpo_train.cli import main as irpo_train

SUBCOMMANDS = [["data", "build"], ["data", "push"], ["data", "tasks"], ["train"], ["eval"], ["run"]]


def invoke(command, *args):
    return CliRunner().invoke(command, list(map(str, args)), catch_exceptions=False)


@pytest.mark.parametrize("path", [[], ["data"], *SUBCOMMANDS])
def test_every_command_has_help_with_an_example(path):
    result = invoke(main, *path, "--help")
    assert result.exit_code == 0 and "Example" in result.output, result.output


@pytest.mark.parametrize("path", SUBCOMMANDS)
def test_every_subcommand_takes_card_overrides_and_dry_run(path, tmp_path):
    extra = ["--push-to-hub", "me/x"] if path == ["data", "push"] else []
    result = invoke(main, *path, "--card", "gsm8k", "--dry-run", *extra, "sampling.num_samples=3")
    assert result.exit_code == 0, result.output
    assert "name: gsm8k" in result.output and "num_samples: 3" in result.output and "# would " in result.output


@pytest.mark.parametrize("path", [p for p in SUBCOMMANDS if p != ["data", "tasks"]])
def test_a_dry_run_names_the_run_folder_under_runs_dir(path, tmp_path):
    extra = ["--push-to-hub", "me/x"] if path == ["data", "push"] else []
    result = invoke(main, *path, "--card", "gsm8k", "--runs-dir", tmp_path, "--dry-run", *extra)
    assert result.exit_code == 0, result.output
    assert f"{tmp_path / 'gsm8k'}" in result.output.splitlines()[-1], result.output
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.parametrize("path", SUBCOMMANDS)
def test_every_subcommand_refuses_a_bad_value_in_one_line(path, tmp_path):
    extra = ["--push-to-hub", "me/x"] if path == ["data", "push"] else []
    result = (
        invoke(main, *path, "--runs-dir", tmp_path, *extra, "pairs.scheme=zigzag")
        if path != ["data", "tasks"]
        else (invoke(main, *path, "pairs.scheme=zigzag"))
    )
    assert result.exit_code == 1, result.output
    assert "pairs.scheme must be cycle or distinct, got 'zigzag'" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_old_entry_points_are_the_same_commands():
    assert invoke(irpo_data, "--help").output == invoke(main, "data", "--help").output.replace("main data", "main")
    for alias, name in ((irpo_train, "train"), (irpo_eval, "eval")):
        assert alias is main.commands[name]
    assert main.commands["data"] is irpo_data


def test_iteration_zero_is_a_usage_error_not_a_traceback(tmp_path):
    result = invoke(main, "data", "build", "--runs-dir", tmp_path, "--iter", "0")
    assert result.exit_code == 2 and "0 is not in the range x>=1" in result.output
