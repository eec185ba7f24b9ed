"""The lm-eval YAMLs of every registered task, written from the registry and the task's card.

    python -m irpo_eval.task_yamls            # (re)write evals/irpo_<task>.yaml and irpo_<task>_maj.yaml
    python -m irpo_eval.task_yamls --check    # exit 1 naming any that differ from what would be written

Each task gets two small YAMLs on top of the shared templates (`_irpo_template_yaml`, greedy, and
`_irpo_maj_template_yaml`, majority vote): its name, and the generation settings of its paper
card `cards/<task>.yaml` (eval.max_new_tokens, eval.temperature, eval.maj_k), so that a plain
lm-eval user of `--include_path evals/` generates what `irpo eval` does with that card. (`irpo eval`
sets the same keys from the card it is given, which may be another.) lm-eval's own benchmarks
are generated the same way (its `_generate_configs.py` scripts).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from irpo.card_loader import load_card
from irpo.tasks import task_names

TASKS_DIR = Path(__file__).parent  # the YAMLs and templates ship beside lm_tasks.py, whose functions they call
TEMPLATES = ("_irpo_template_yaml", "_irpo_maj_template_yaml")


def task_yamls(task: str, include_dir: Path = TASKS_DIR, card: str | None = None) -> dict[str, str]:
    """{file name: text} of the task's greedy and maj@k YAMLs, at the settings of `card` (its paper card).

    The templates are included by name when the YAMLs sit beside them (`include_dir` is where the
    YAMLs go), else by absolute path, which lm-eval also accepts.
    """
    eval_settings = load_card(card or task).eval
    greedy, maj = (name if include_dir == TASKS_DIR else str(TASKS_DIR / name) for name in TEMPLATES)
    header = (
        f"# Written by python -m irpo_eval.task_yamls from {card or f'cards/{task}.yaml'}: change the card, then run "
        "it again.\n"
        f"#   python -m irpo_eval.lm_eval_cli --include_path evals/ --tasks irpo_{task},irpo_{task}_maj "
        "--apply_chat_template --model irpo-vllm --model_args pretrained=PATH\n"
        f'# Local data instead of the Hub: --metadata \'{{"data_dir": "path/to/{task}"}}\' (a folder of test.jsonl).\n'
    )
    tokens = eval_settings.max_new_tokens
    return {
        f"irpo_{task}.yaml": (
            f"{header}include: {greedy}\ntask: irpo_{task}\ndataset_kwargs:\n  task: {task}\n"
            f"generation_kwargs:\n  until: []\n  do_sample: false\n  temperature: 0.0\n  max_gen_toks: {tokens}\n"
        ),
        f"irpo_{task}_maj.yaml": (
            f"{header}include: {maj}\ntask: irpo_{task}_maj\ndataset_kwargs:\n  task: {task}\n"
            f"repeats: {eval_settings.maj_k}\n"
            f"generation_kwargs:\n  until: []\n  do_sample: true\n  temperature: {float(eval_settings.temperature)}\n"
            f"  max_gen_toks: {tokens}\n"
        ),
    }


def stale_yamls(folder: Path = TASKS_DIR, tasks: list[str] | None = None) -> list[Path]:
    """The task YAMLs in `folder` that are missing or differ from what `task_yamls` writes."""
    stale = []
    for task in tasks or task_names():
        for name, text in task_yamls(task, folder).items():
            path = folder / name
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
    return stale


def write_yamls(folder: Path = TASKS_DIR, tasks: list[str] | None = None) -> list[Path]:
    """Write the YAMLs that are missing or out of date; the paths written."""
    written = stale_yamls(folder, tasks)
    for path in written:
        task = path.name.removeprefix("irpo_").removesuffix(".yaml").removesuffix("_maj")
        path.write_text(task_yamls(task, folder)[path.name], encoding="utf-8")
    return written


@click.command()
@click.option("--check", is_flag=True, help="Write nothing; exit 1 naming the YAMLs that are out of date.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=TASKS_DIR,
    show_default="evals/",
    help="Folder to write into (your own tasks' YAMLs; they include the templates here by path).",
)
def main(check: bool, out: Path) -> None:
    """Write the lm-eval YAMLs of every registered task from its card.

    \b
    Example:
      python -m irpo_eval.task_yamls --check
    """
    if check:
        stale = stale_yamls(out)
        for path in stale:
            click.echo(f"{path} is missing or out of date: run python -m irpo_eval.task_yamls", err=True)
        sys.exit(1 if stale else 0)
    out.mkdir(parents=True, exist_ok=True)
    written = write_yamls(out)
    click.echo("\n".join(f"wrote {path}" for path in written) or f"every task's YAMLs in {out} are up to date")


if __name__ == "__main__":
    main()
