"""Publish one iteration's pairs: DatasetDict on disk, dataset card, manifest, Hub push.

Writes into `runs/NAME/iter_T/`:
- `pairs/`: a `datasets.DatasetDict` with one split, `train` (save_to_disk, atomic);
- `README.md`: the dataset card (Hub YAML header, counts, drop reasons, lineage);
- `manifest.json`: hashes and counts, written last.

`push_iteration` uploads the pairs as config `iter_T` of one dataset repo per run, adds the
card and manifest under `iter_T/`, and tags the push `iter_T-<fingerprint>`: the tag is how a later
run knows the iteration is there (irpo.hub.pushed_tags), so pushes that failed or were never asked
for catch up. What reaches the Hub and how (visibility, no local paths, the token) is irpo.hub's.
"""

from __future__ import annotations

import logging
import string
from importlib import resources
from pathlib import Path

import polars as pl

from irpo.hub import HubError, iteration_tag, public_text, require_online, resolve_token
from irpo.pairs import DROP_REASONS, fingerprint  # noqa: F401  (fingerprint: its callers import it here too)
from irpo.reading import load_dataset_dir, read_text
from irpo.runs import MANIFEST, atomic_dir, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


PublishError = HubError  # the name before the Hub's code left this module


def save_pairs(pairs: pl.DataFrame, iteration: int, path: Path):
    from datasets import Dataset, DatasetDict

    table = pairs.with_columns(pl.lit(iteration, dtype=pl.Int32).alias("iteration"))
    # From the Arrow table directly: Dataset.from_polars fails on a table with no rows, and an
    # iteration with no pairs is a result to save (and report), not a crash.
    dataset = DatasetDict({"train": Dataset(table.to_arrow())})
    with atomic_dir(path) as tmp:
        # One shard at least: datasets writes no shard for an empty split and then cannot load it.
        dataset.save_to_disk(str(tmp), num_shards={"train": 1} if table.height == 0 else None)
    return dataset


def dataset_card(**fields) -> str:
    template = (resources.files("irpo_cards") / "dataset_card.md").read_text()
    stats = fields.pop("stats")
    rows = [f"| generation {r.replace('_', ' ')} | {stats[f'dropped_{r}']} |" for r in DROP_REASONS]
    rows += [
        f"| question: prompt longer than the engine's context (not sampled) | {stats.get('questions_prompt_too_long', 0)} |",
        f"| question: no usable generation left | {stats['questions_no_usable_generation']} |",
        f"| question: no correct generation (and no gold winner) | {stats['questions_no_correct']} |",
        f"| question: no wrong generation | {stats['questions_no_wrong']} |",
        f"| pair: over pairs.max_pairs (a random subset kept) | {stats.get('dropped_over_max_pairs', 0)} |",
    ]
    label = fields.pop("label", "gold")
    values = {
        **stats,
        **fields,
        "drop_table": "\n".join(rows),
        # pairs.label vote: questions without gold have no accuracy; none at all is said so, not shown as 0%
        "sample_accuracy": "n/a (no gold answers)"
        if stats.get("samples_judged") == 0
        else f"{stats['sample_accuracy']:.1%}",
        "labelling": labelling(label, stats),
    }
    return string.Template(template).substitute(values)


def labelling(label: str, stats: dict) -> str:
    """How the card's pairs were labelled (pairs.label), in words and counts."""
    if label == "gold":
        return (
            "By the gold answer (`pairs.label: gold`, the paper's): a chosen answer matches the question's gold "
            "final answer, a rejected one does not. Every pair weighs 1."
        )
    judged = stats.get("vote_winner_judged", 0)
    right = f"{stats.get('vote_winner_correct', 0) / judged:.1%}" if judged else "n/a"
    return (
        f"`pairs.label: {label}`. By self-consistency vote (ScPO, Prasad et al. 2024) for "
        f"{stats.get('questions_labelled_by_vote', 0)} questions"
        + (f", by the gold answer for {stats.get('questions_labelled_by_gold', 0)}" if label == "mixed" else "")
        + ": the chosen answer is the most-voted of the question's samples, the rejected one the least-voted "
        "(answers counted as maj@k counts them; no answer never votes). The columns `label` (`vote` or `gold`) "
        "and `weight` (the vote margin: (winner's votes - loser's votes) / samples; 1 for gold) say so per pair; "
        "training weighs each pair's loss by it.\n\n"
        "| | |\n|---|---:|\n"
        f"| pairs labelled by vote | {stats.get('pairs_labelled_by_vote', 0)} |\n"
        f"| questions labelled by vote with fewer than two answers (no loser) | "
        f"{stats.get('questions_vote_unanimous', 0)} |\n"
        "| questions labelled by vote whose answers all tie (margin 0: no pairs) | "
        f"{stats.get('questions_vote_tied', 0)} |\n"
        f"| questions labelled by vote whose most-voted answer is right (where a gold answer exists: {judged}) | "
        f"{right} |"
    )


def write_card_and_manifest(iter_dir: Path, card_text: str, manifest: dict) -> None:
    write_text_atomic(iter_dir / "README.md", card_text)
    write_json_atomic(iter_dir / MANIFEST, manifest)  # last: its presence means "complete"


def push_iteration(
    iter_dir: Path,
    repo_id: str,
    iteration: int,
    fingerprint_hex: str,
    private: bool | None = None,
    token: str | None = None,
) -> str:
    """Push `iter_dir` as config `iter_T` of `repo_id`; return the tag it created.

    `private`: True or False sets a new repo's visibility; None (the default) leaves it to the Hub's
    default for the user or org."""
    from huggingface_hub import CommitOperationAdd, HfApi

    require_online(
        repo_id,
        f"the dataset in {iter_dir} is complete. Push it later with `irpo data push --iter {iteration} "
        f"--push-to-hub {repo_id}`",
    )
    token = resolve_token(token)
    config = f"iter_{iteration}"
    tag = iteration_tag(iteration, fingerprint_hex)
    run_root = iter_dir.parent
    card_text = public_text(read_text(iter_dir / "README.md"), run_root)
    manifest_text = public_text(read_text(iter_dir / MANIFEST), run_root)
    dataset = load_dataset_dir(iter_dir / "pairs")  # an unreadable dataset is no failed push: said as itself
    try:
        dataset.push_to_hub(
            repo_id,
            config_name=config,
            private=private,
            token=token,
            commit_message=f"irpo: pairs of iteration {iteration} ({fingerprint_hex[:12]})",
        )
        api = HfApi(token=token)
        api.create_commit(
            repo_id,
            repo_type="dataset",
            operations=[
                # The local card cannot know the repo; the pushed copy names it in its example.
                CommitOperationAdd(f"{config}/README.md", card_text.replace('"REPO"', f'"{repo_id}"').encode()),
                CommitOperationAdd(f"{config}/manifest.json", manifest_text.encode()),
            ],
            commit_message=f"irpo: dataset card and manifest of iteration {iteration}",
        )
        api.create_tag(repo_id, tag=tag, repo_type="dataset", exist_ok=True, tag_message=f"irpo {config}")
    except PublishError:
        raise
    except Exception as exc:  # network, auth, offline: the local dataset stays complete either way
        raise PublishError(
            f"push of {iter_dir} to {repo_id} failed ({type(exc).__name__}: {exc}); the local dataset is "
            f"complete; retry with `irpo data push --iter {iteration} --push-to-hub {repo_id}`"
        ) from None
    log.info("pushed %s as config %s of https://huggingface.co/datasets/%s (tag %s)", iter_dir, config, repo_id, tag)
    return tag
