"""The model card of M_t on the Hub: README.md, YAML front matter then prose, made from the run folder.

    text = model_card(run, 2, "me/irpo-gsm8k-models", weights_sha256=w, datasets_repo="me/irpo-gsm8k")
    pushed_model(text)     # PushedModel(iteration=2, weights_sha256=w): what a branch holds, read back

Inputs: models/M_t/train_manifest.json (the pairs' fingerprint, the selected step and its held-out
accuracy), evals/M_t.json (the test results, used only when their key names these weights), and the
run's card.yaml (the task, the base model, the `train` keys). The front matter is huggingface_hub's
ModelCardData: `model-index` holds the test results in the Hub's format, for example

    model-index:
    - name: irpo-gsm8k-models iter_2
      results:
      - task: {type: text-generation}
        dataset: {name: gsm8k, type: openai/gsm8k, config: main, split: test}
        metrics:
        - {type: accuracy, value: 0.781, name: greedy accuracy}
        - {type: accuracy, value: 0.84, name: maj@32, args: {k: 32}}

and `irpo:` records the iteration and the weights' sha256, which is how a later run knows what a
branch holds (irpo.model_repo). The text is deterministic (no dates), so that the same inputs make
the same card and a rerun finds nothing to push; it goes through irpo.hub.public_text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from irpo.card import TRAIN_SECTIONS, Card
from irpo.card_loader import card_from_dict
from irpo.hub import iteration_tag, public_text
from irpo.objectives import OBJECTIVES
from irpo.reading import read_yaml
from irpo.records import EvalRecord, TrainManifest
from irpo.runs import RunFolder
from irpo.tasks import task_from_config

PAPER = "[Pang et al., 2024](https://arxiv.org/abs/2404.19733)"


@dataclass(frozen=True)
class PushedModel:
    """What a branch's card says it holds."""

    iteration: int
    weights_sha256: str


def model_card(run: RunFolder, t: int, repo_id: str, *, weights_sha256: str, datasets_repo: str | None = None) -> str:
    """README.md of M_t in model repo `repo_id` (`datasets_repo`: where the run pushed its pairs, if it did)."""
    manifest = TrainManifest.from_json(run.train_manifest(t))
    card = card_from_dict(read_yaml(run.card_file), str(run.card_file))
    record = eval_record(run, t, weights_sha256)
    data = card_data(
        card, manifest, record, repo_id=repo_id, weights_sha256=weights_sha256, datasets_repo=datasets_repo
    )
    sections = [
        _intro(card, manifest, repo_id, t),
        _pairs(card, manifest, datasets_repo, t),
        _selection(manifest),
        _results(card, record, t),
        _train_keys(card, manifest, t),
    ]
    return public_text(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n", run.root)


def eval_record(run: RunFolder, t: int, weights_sha256: str) -> EvalRecord | None:
    """evals/M_t.json when it is the result of these weights; None before the evaluation, or after a retrain."""
    path = run.eval_record(f"M_{t}")
    if not path.is_file():
        return None
    record = EvalRecord.from_json(path)
    return record if record.key.get("model_weights_sha256") == weights_sha256 else None


def pushed_model(text: str | None) -> PushedModel | None:
    """The `irpo:` block of a card irpo pushed; None for no card, or one irpo did not write."""
    from huggingface_hub import ModelCard  # here: `import irpo` never loads the Hub client

    if not text:
        return None
    block = ModelCard(text, ignore_metadata_errors=True).data.to_dict().get("irpo")
    if not isinstance(block, dict) or not isinstance(block.get("iteration"), int):
        return None
    return PushedModel(block["iteration"], str(block.get("weights_sha256", "")))


def card_data(
    card: Card, manifest: TrainManifest, record: EvalRecord | None, *, repo_id: str, weights_sha256: str, datasets_repo
):
    """The front matter: lineage, tags, the test results as model-index, and the `irpo:` block."""
    from huggingface_hub import ModelCardData  # here: `import irpo` never loads the Hub client

    base = card.model.base
    is_hub_id = base.count("/") == 1 and ":" not in base and not base.startswith((".", "/", "~"))
    return ModelCardData(
        model_name=f"{repo_id.split('/')[1]} iter_{manifest.iteration}",
        base_model=base if is_hub_id else None,
        datasets=[datasets_repo] if datasets_repo else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["irpo", "iterative-rpo", "dpo", manifest.objective.replace("_", "-")],
        eval_results=_eval_results(card, record) if record else None,
        irpo={
            "iteration": manifest.iteration,
            "weights_sha256": weights_sha256,
            "pairs_tag": iteration_tag(manifest.iteration, manifest.pairs_fingerprint),
            "run": card.name,
        },
    )


def _eval_results(card: Card, record: EvalRecord) -> list:
    """greedy (any answer style), greedy in the prompt's format (the paper's exact match), maj@k."""
    from huggingface_hub import EvalResult  # here: `import irpo` never loads the Hub client

    task = task_from_config(card.task)
    local = card.task.data_dir is not None
    dataset = {
        "task_type": "text-generation",
        "dataset_type": card.task.name if local else (card.task.hub_id or task.hub_id or card.task.name),
        "dataset_name": card.task.name,
        "dataset_config": None if local else task.hub_config,
        "dataset_split": card.task.test_split,
        "metric_type": "accuracy",
    }
    metrics = [("greedy accuracy", record.greedy, None)]
    if record.greedy_strict is not None:
        metrics.append(("greedy accuracy, strict format", record.greedy_strict, None))
    metrics.append((f"maj@{record.maj_k}", record.maj_at_k, {"k": record.maj_k}))
    return [
        EvalResult(**dataset, metric_name=name, metric_value=round(value, 4), metric_args=args)
        for name, value, args in metrics
    ]


def _intro(card: Card, manifest: TrainManifest, repo_id: str, t: int) -> str:
    objective = OBJECTIVES[manifest.objective].label if manifest.objective in OBJECTIVES else manifest.objective
    return (
        f"# {repo_id} iter_{t}\n\n"
        f"M_{t} of run `{card.name}` of Iterative Reasoning Preference Optimization ({PAPER}), made with irpo: "
        f"trained with {objective} from M_{t - 1} (`{manifest.reference}`) on iteration {t}'s preference pairs, "
        f"which M_{t - 1} sampled on task {card.task.name}. Branch `iter_{t}` holds it; `main` holds the latest "
        "iteration pushed.\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", revision="iter_{t}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", revision="iter_{t}")\n```'
    )


def _pairs(card: Card, manifest: TrainManifest, datasets_repo: str | None, t: int) -> str:
    tag = iteration_tag(t, manifest.pairs_fingerprint)
    counts = f"{manifest.pairs_trained} pairs trained on ({manifest.pairs_dropped_too_long} dropped as too long)"
    if datasets_repo:
        where = (
            f"config `iter_{t}` of [{datasets_repo}](https://huggingface.co/datasets/{datasets_repo}), tag `{tag}`: "
            f'`load_dataset("{datasets_repo}", name="iter_{t}", revision="{tag}")`'
        )
    else:
        where = (
            f"iteration {t}'s pairs of run `{card.name}` (fingerprint `{manifest.pairs_fingerprint[:12]}`, tag "
            f"`{tag}` once pushed). They were not pushed with this model: they are local to the run "
            f"(`iter_{t}/pairs`); `irpo run --push-to-hub ORG/NAME` publishes them"
        )
    return f"## Trained on\n\n{where}.\n\n{counts}."


def _selection(manifest: TrainManifest) -> str:
    if manifest.held_out_accuracy is None:
        chosen = f"No held-out check chose a step: this is the last step's model ({manifest.steps} steps)."
    else:
        why = f" ({manifest.why})" if manifest.why else ""
        chosen = (
            f"Step {manifest.selected_step} of {manifest.selection_steps} was selected, with held-out accuracy "
            f"{manifest.held_out_accuracy:.1%} on {manifest.held_out_questions} held-out questions{why}."
        )
    if manifest.retrained:
        chosen += f" The model was then retrained on all pairs for {manifest.steps} steps."
    return f"## Checkpoint selection\n\n{chosen} `checkpoint_choice.json` has every check."


def _results(card: Card, record: EvalRecord | None, t: int) -> str:
    if record is None:
        return (
            f"## Test results\n\nNot evaluated yet: `irpo eval` writes evals/M_{t}.json, and the next push with "
            "`--push-models-to-hub` adds its results here and to the metadata."
        )
    rows = [f"| greedy | {record.greedy:.1%} |"]
    if record.greedy_strict is not None:
        rows.append(f"| greedy, strict format | {record.greedy_strict:.1%} |")
    rows.append(f"| maj@{record.maj_k} | {record.maj_at_k:.1%} |")
    return (
        f"## Test results\n\n{record.questions} questions of {card.task.name}, split {card.task.test_split}.\n\n"
        "| metric | accuracy |\n| --- | --- |\n" + "\n".join(rows)
    )


def _train_keys(card: Card, manifest: TrainManifest, t: int) -> str:
    rows = [f"| train.{key} | {_yaml_value(value)} |" for key, value in dataclasses.asdict(card.train).items()]
    note = ""
    if card.sha256(TRAIN_SECTIONS) != manifest.train_card_sha256:
        note = (
            f"\n\nThe run's card changed after M_{t} was trained, so these are the run's keys now, which M_{t} may "
            "not have been trained with; train_manifest.json holds the hash of the card it was."
        )
    return "## Training keys\n\nThe `train` section of the run's card.yaml.\n\n| key | value |\n| --- | --- |\n" + (
        "\n".join(rows) + note
    )


def _yaml_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
