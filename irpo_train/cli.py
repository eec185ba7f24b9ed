"""`irpo train` (alias `irpo-train`): train M_T with DPO + NLL on iteration T's pairs."""

from __future__ import annotations

import shlex

import click

from irpo.command import (
    Command,
    card_option,
    dry_run_option,
    iter_option,
    overrides_argument,
    private_option,
    quiet_option,
    resolve_card,
    runs_option,
    setup_logging,
    show_dry_run,
    slice_option,
)
from irpo.errors import SettingError
from irpo.hub import check_repo_id
from irpo.lock import run_lock
from irpo.model_repo import push_model
from irpo.objectives import ABLATIONS
from irpo.reaper import start_reaper
from irpo.records import TrainManifest
from irpo.runs import TRAIN_MANIFEST, RunFolder


@click.command(cls=Command)
@card_option
@iter_option
@slice_option
@runs_option
@click.option(
    "--ablation",
    type=click.Choice(list(ABLATIONS)),
    default=None,
    help="Train a side model models/M_T-NAME with this objective from the same samples; M_T is untouched.",
)
@click.option(
    "--push-models-to-hub",
    "push_models_to_hub",
    metavar="ORG/NAME",
    default=None,
    help="Then push M_T to this model repo: branch iter_T, and main unless it holds a later iteration (token: "
    "HF_TOKEN or `hf auth login`); a model already there is not pushed again.",
)
@private_option
@dry_run_option
@quiet_option
@overrides_argument
def main(card, iteration, slice_index, runs_dir, ablation, push_models_to_hub, private, dry_run, quiet, overrides):
    """Train M_T from M_{T-1} on runs/NAME/iter_T/pairs with DPO + NLL.

    \b
    Examples:
      irpo train                                   # demo card, iteration 1 (after irpo data build)
      irpo train --card gsm8k --iter 2 train.lora=true train.max_steps=2000
      irpo train --ablation sft_winners            # the STaR baseline beside M_1, same pairs
      irpo train --iter 2 --push-models-to-hub ORG/irpo-demo-models   # M_2 to branch iter_2 (and main)
      irpo train --slice 0 sampling.resample_every=4   # a semi-online iteration's first slice (after its build)

    train.objective picks the loss: dpo_nll (the paper's, default), dpo (alpha = 0),
    sft_winners (NLL on the winners), sft_gold (NLL on the dataset's gold solutions),
    dpo_norm_nll (length-normalised DPO + NLL).
    With train.retrain_with_held_out (the paper's) a selection run chooses the step on the
    held-out questions, then a retrain on all pairs for that many steps makes M_T.

    Writes runs/NAME/models/M_T/: a transformers model folder (vLLM and lm-eval load it as is)
    with metrics.jsonl, logps.png, checkpoint_choice.json and the cached reference log-probs.
    A killed run resumes from its last checkpoint when run again.

    \b
    On several processes (train.batch_size stays the global batch; README "Scaling out"):
      torchrun --standalone --nproc-per-node 2 $(which irpo) train     # DDP; CPU or GPU
      accelerate launch --config_file cards/accelerate/fsdp2.yaml $(which irpo) train
    """
    setup_logging(quiet)
    resolved = resolve_card(card, overrides)
    if ablation:  # checked as a card value would be, so sft_gold on a task without solutions says why
        resolve_card(card, [*overrides, f"train.objective={ABLATIONS[ablation].objective.name}"])
    if push_models_to_hub:
        _check_push(push_models_to_hub, ablation)
    if dry_run:
        run = RunFolder.for_card(resolved, runs_dir)
        push = f", then push it to {push_models_to_hub} (branch iter_{iteration})" if push_models_to_hub else ""
        return show_dry_run(resolved, f"train {run.model(iteration, ablation)} from {run.pairs(iteration)}{push}")
    # Here, not at the top: both import torch, which `irpo --help` and `irpo run`'s parent never load
    # (each stage's memory is its own process's).
    from irpo_train import distributed
    from irpo_train.train import train_iteration
    from irpo_train.train_slice import train_slice

    start_reaper()  # the engine's processes (held-out checks on vLLM) die with this command
    run = RunFolder.for_card(resolved, runs_dir)
    with run_lock(run.root):  # rank 0 holds it for the launch
        if slice_index is not None:
            if ablation or push_models_to_hub:
                raise SettingError("--slice trains one segment of M_T: leave out --ablation and --push-models-to-hub")
            out = train_slice(resolved, iteration, slice_index, runs_dir, progress=not quiet)
            if distributed.is_main():
                done = (out / "train_manifest.json").is_file()
                click.echo(f"{out}" + ("" if done else f": slice {slice_index} trained; M_{iteration} not finished"))
            return
        out = train_iteration(resolved, iteration, runs_dir, progress=not quiet, ablation=ablation)
        pushed = None
        if push_models_to_hub and distributed.is_main():  # one process pushes; under the lock, as it reads M_T
            retry = shlex.join(["irpo", "train", "--card", card, "--iter", str(iteration), *overrides])
            retry += f" --push-models-to-hub {push_models_to_hub}"
            pushed = push_model(run, iteration, push_models_to_hub, retry=retry, private=private)
    if not distributed.is_main():
        return
    manifest = TrainManifest.from_json(out / TRAIN_MANIFEST)
    click.echo(
        f"{out} ({manifest.objective}): step {manifest.selected_step} selected, held-out accuracy "
        f"{100 * (manifest.held_out_accuracy or 0):.1f}%; curves in {out / 'logps.png'}"
    )
    if push_models_to_hub:
        branches = ", ".join(pushed) if pushed else f"nothing: it has this M_{iteration} and its card"
        click.echo(f"https://huggingface.co/{push_models_to_hub}/tree/iter_{iteration}: pushed to {branches}")


def _check_push(repo_id: str, ablation: str | None) -> None:
    """Before any training: a repo id the Hub would refuse, or a side model (its repo would be M_T's)."""
    check_repo_id(repo_id, "--push-models-to-hub")
    if ablation:
        raise click.UsageError(
            f"--push-models-to-hub pushes M_T, not the side model of --ablation {ablation}; leave one of them out"
        )
