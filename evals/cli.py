"""`irpo eval` (alias `irpo-eval`): greedy and maj@k test accuracy of a run's models, and the leaderboard."""

from __future__ import annotations

from pathlib import Path

import click

from irpo.card_loader import BUNDLED_CARDS, load_card
from irpo.command import (
    Command,
    card_option,
    dry_run_option,
    overrides_argument,
    private_option,
    quiet_option,
    resolve_card,
    runs_option,
    setup_logging,
    show_dry_run,
)
from irpo.errors import SettingError
from irpo.hub import check_repo_id
from irpo.lock import run_lock
from irpo.models import resolve_model
from irpo.reaper import start_reaper
from irpo.runs import RunFolder
from irpo.tasks import get_task, task_names
from irpo_eval.evaluate import EvalSettings, evaluate_model
from irpo_eval.run_eval import evaluate_run


@click.command(cls=Command)
@card_option
@runs_option
@click.option(
    "--maj",
    "maj_k",
    type=int,
    default=None,
    help="Samples per question for maj@k and pass@k  [default: the card's eval.maj_k]",
)
@click.option(
    "--limit", type=int, default=None, help="Evaluate the first N test questions  [default: the card's eval.limit]"
)
@click.option(
    "--model",
    "model_spec",
    default=None,
    metavar="PATH",
    help="Evaluate this one model (folder, .gguf or Hub id) instead of a run's models.",
)
@click.option("--task", default=None, help=f"Task of --model ({', '.join(task_names())})  [default: the card's task]")
@click.option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Read the test split from local {split}.jsonl files instead of the Hub.",
)
@click.option(
    "--backend",
    type=click.Choice(["irpo-vllm", "vllm"]),
    default=None,
    help="irpo-vllm sends a question's k samples as one request; vllm is lm-eval's own (k requests)  "
    "[default: the card's eval.backend]",
)
@click.option(
    "--push-to-hub",
    "push_to_hub",
    metavar="ORG/NAME",
    default=None,
    help="Also upload evals/ and the leaderboard to this dataset repo (token: HF_TOKEN or `hf auth login`).",
)
@click.option(
    "--output", type=click.Path(dir_okay=False), default=None, help="With --model: also write the result as JSON here."
)
@click.option(
    "--log-samples",
    is_flag=True,
    help="Also write each question's prompt, completions and answers (evals/M_t.samples.jsonl).",
)
@private_option
@dry_run_option
@quiet_option
@overrides_argument
def main(
    card,
    runs_dir,
    maj_k,
    limit,
    model_spec,
    task,
    data_dir,
    backend,
    push_to_hub,
    output,
    log_samples,
    private,
    dry_run,
    quiet,
    overrides,
):
    """Evaluate greedy, maj@k and pass@k test accuracy with lm-eval, scored by the builder's grader.

    \b
    Examples:
      irpo eval                                 # every model of runs/demo (M_0 = the base model)
      irpo eval --card gsm8k --maj 32           # the GSM8K run's models, the paper's maj@32
      irpo eval eval.limit=50 eval.temperature=1.0
      irpo eval --model runs/demo/models/M_1 --task demo --maj 8 --limit 50

    A run's results go to runs/NAME/evals/M_t.json and runs/NAME/leaderboard.{md,json,png};
    a rerun reuses every result whose model and settings are unchanged. With --model the
    numbers are printed, and written as JSON with --output. The tasks are plain lm-eval tasks
    too: python -m irpo_eval.lm_eval_cli --include_path evals/ --tasks irpo_gsm8k_maj ...
    """
    setup_logging(quiet)
    # The flags are shorthands for card keys: each setting has one source, the card (checked there).
    flags = {"eval.maj_k": maj_k, "eval.limit": limit, "eval.backend": backend}
    overrides = (*overrides, *(f"{key}={value}" for key, value in flags.items() if value is not None))
    if model_spec is not None:
        _one_model(card, model_spec, task, data_dir, output, overrides, dry_run)
        return

    resolved = resolve_card(card, overrides, data_dir)
    if task is not None and task != resolved.task.name:
        raise SettingError(f"--task {task} differs from the card's task {resolved.task.name}; --task is for --model")
    settings = EvalSettings.from_card(resolved)
    if push_to_hub:
        check_repo_id(push_to_hub)  # before the evaluation, not after it
    if dry_run:
        root = RunFolder.for_card(resolved, runs_dir).root
        return show_dry_run(resolved, f"evaluate the models of {root} (greedy and maj@{settings.maj_k})")

    start_reaper()  # lm-eval's engine processes die with this command
    with run_lock(RunFolder.for_card(resolved, runs_dir).root):
        paths = evaluate_run(resolved, runs_dir, settings, push_to_hub, log_samples, private=private)
    click.echo(paths[1].read_text())
    click.echo(f"written: {', '.join(str(p) for p in paths)}")


def _one_model(card, model_spec, task, data_dir, output, overrides, dry_run):

    task = task or load_card(card).task.name
    get_task(task)  # an unknown --task is named as such, with the known ones
    # Settings come from the bundled card of the same task when there is one (the paper's
    # maj@k temperature and answer length), else from the --card.
    defaults = resolve_card(task if task in BUNDLED_CARDS else card, [f"task.name={task}", *overrides], data_dir)
    settings = EvalSettings.from_card(defaults)
    if dry_run:
        return show_dry_run(defaults, f"evaluate {model_spec} on {task} (greedy and maj@{settings.maj_k})")

    start_reaper()
    model = resolve_model(model_spec, trust_remote_code=settings.trust_remote_code)
    record = evaluate_model(model, settings, Path(output) if output else None)
    k = settings.maj_k
    click.echo(
        f"{model_spec} on {task} ({record.questions} questions): greedy {100 * record.greedy:.1f}%, "
        f"maj@{k} {100 * record.maj_at_k:.1f}%, pass@{k} {100 * record.pass_at_k:.1f}%, sample accuracy "
        f"{100 * record.sample_accuracy:.1f}%"
    )
