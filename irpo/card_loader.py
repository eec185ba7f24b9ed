"""Reading a recipe card: a YAML file (or a bundled card's name) and `key=value` overrides, into a
validated `Card` (irpo.card), or one `CardError` listing every problem at once.

    load_card("demo", ["sampling.num_samples=8", "sampling={top_p: 0.9}"])

Overrides use dotted keys, parsed as YAML scalars; a section given whole merges into the card's.
Unknown keys (with the nearest valid one), wrong types, a value outside its choices or range, an
unknown task or objective and a missing data folder are collected and raised together, so a user
fixes a card in one pass. A card with a renamed key (RENAMED) loads with a one-line note.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from irpo import objectives
from irpo.card import Card, flatten
from irpo.card_values import name_problem, range_problems, shown
from irpo.errors import IrpoError
from irpo.tasks import TaskError, get_task, task_names

log = logging.getLogger(__name__)


class CardError(IrpoError, ValueError):
    """A card that cannot be used; `problems` lists every one found."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        if len(problems) == 1:  # one line, as every error a user can fix
            super().__init__(f"card {source}: {problems[0]}")
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            super().__init__(f"card {source} has {len(problems)} problems:\n{lines}")

    def __reduce__(self):  # raised in an `irpo run` stage's process, raised again in irpo run's own
        return CardError, (self.source, self.problems)


# The cards shipped in cards/ (package irpo_cards): a task's paper card is named after the task.
_CARD_FILES = [entry.name for entry in resources.files("irpo_cards").iterdir() if entry.name.endswith(".yaml")]


BUNDLED_CARDS = tuple(
    sorted((name.removesuffix(".yaml") for name in _CARD_FILES), key=lambda name: (not name.startswith("demo"), name))
)  # the embedded demo's first


def card_path(name_or_path: str) -> Path:
    """A card file: a path as given, or the name of a card shipped with irpo."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    bundled = resources.files("irpo_cards") / f"{name_or_path}.yaml"
    return Path(str(bundled))


def load_card(name_or_path: str = "demo", overrides: list[str] | tuple[str, ...] = ()) -> Card:
    """Read a card file (or a bundled card by name) and apply `key=value` overrides."""
    path = card_path(name_or_path)
    if not path.is_file():
        raise CardError(
            str(path),
            [f"no such card file; pass a path or one of the bundled cards: {', '.join(BUNDLED_CARDS)}"],
        )
    raw = read_card_file(path)
    problems: list[str] = []
    for item in overrides:
        _apply_override(raw, item, problems)
    _rename_keys(raw, str(path))
    card = _build(Card, raw, "", problems)
    problems += _check_values(card)
    if problems:
        raise CardError(str(path), problems)
    return card


MAX_CARD_BYTES = 1_000_000  # a card is a page of YAML; a larger file is not one


MAX_CARD_VALUES = 10_000  # values after YAML's aliases are expanded (a 300-byte alias bomb expands to billions)


def read_card_file(path: Path) -> dict:
    """The YAML mapping in `path`, or a CardError saying in one line why it is not a card."""
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise CardError(str(path), [f"is {path.stat().st_size:,} bytes, not a card (a card is a page of YAML)"])
        text = path.read_bytes().decode("utf-8")
        raw = yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise CardError(str(path), [f"is not UTF-8 text (byte {exc.start}); is it a card?"]) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise CardError(str(path), [f"is not valid YAML{line}: {problem}; fix the card"]) from None
    except (OSError, RecursionError, ValueError) as exc:  # ValueError: an integer of more than 4,300 digits
        raise CardError(str(path), [f"cannot be read ({type(exc).__name__}: {str(exc)[:200]})"]) from None
    if raw is None:
        raise CardError(str(path), ["is empty; a card is a mapping of sections (name:, task:, sampling:, ...)"])
    if not isinstance(raw, dict):
        raise CardError(
            str(path), [f"holds a YAML {type(raw).__name__}, not a mapping of sections (name:, task:, sampling:, ...)"]
        )
    if _count_values(raw, MAX_CARD_VALUES) > MAX_CARD_VALUES:
        raise CardError(
            str(path), [f"expands to more than {MAX_CARD_VALUES:,} values (YAML aliases?); a card is a page of YAML"]
        )
    return raw


def _count_values(node: Any, limit: int) -> int:
    """How many values `node` holds once aliases are expanded, counting no further than just past `limit`."""
    count, stack = 0, [node]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
    return count


# Card keys that were renamed: old dotted key -> new one. A card (or a run's frozen card.yaml)
# with an old key still loads, with a one-line message naming the new key.
RENAMED = {
    "train.eval_every": "train.select_every",  # held-out checks choose the step; eval.* is the test set
    "train.eval_questions": "train.select_questions",
    "sampling.kv_cache_gb": "resources.kv_cache_gb",  # machine settings left the run's identity
    "sampling.gpu_memory_utilization": "resources.gpu_memory_utilization",
    "task.split": "task.split_scheme",  # issue 33: a split is train or test; MATH's option picks how to split
    "train.report_to": "tracking.report_to",  # issue 34: every stage logs to the tracker, not the Trainer alone
}


def _rename_keys(raw: dict, source: str) -> None:
    for old, new in RENAMED.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = raw.get(old_section)
        if isinstance(section, dict) and old_key in section:
            value = section.pop(old_key)
            target = raw.setdefault(new_section, {})
            if isinstance(target, dict):
                target.setdefault(new_key, value)
            log.warning("%s: card key %s is now %s; it was read as that (rename it to silence this)", source, old, new)


def card_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Card:
    """Validate an already-parsed card (the frozen `runs/NAME/card.yaml`, a test's dict)."""
    problems: list[str] = []
    if not isinstance(raw, dict) or _count_values(raw, MAX_CARD_VALUES) > MAX_CARD_VALUES:
        raise CardError(source, [f"is not a card: a mapping of sections (name:, task:, ...), got {shown(raw)}"])
    raw = json.loads(json.dumps(raw))  # a copy: renaming keys must not change the caller's dict
    _rename_keys(raw, source)
    card = _build(Card, raw, "", problems)
    problems += _check_values(card)
    if problems:
        raise CardError(source, problems)
    return card


def _apply_override(raw: dict[str, Any], item: str, problems: list[str]) -> None:
    """Set one dotted key. A section given whole (`sampling={top_p: 0.9}`) merges into the card's section:
    the keys it names change, the others keep the card's values."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        problems.append(f"override {shown(item)} is not KEY=VALUE (e.g. sampling.num_samples=8)")
        return
    node = raw
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            problems.append(f"override {shown(item)}: {part!r} is a value, not a section")
            return
    try:
        parsed = yaml.safe_load(value)
    except (yaml.YAMLError, ValueError):  # ValueError: an integer of more than 4,300 digits
        parsed = value
    if _count_values(parsed, MAX_CARD_VALUES) > MAX_CARD_VALUES:
        problems.append(f"override {shown(item)} expands to more than {MAX_CARD_VALUES:,} values")
        return
    if isinstance(parsed, dict) and isinstance(node.get(leaf), dict):
        _merge(node[leaf], parsed)
    else:
        node[leaf] = parsed


def _merge(section: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(section.get(key), dict):
            _merge(section[key], value)
        else:
            section[key] = value


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """Instantiate dataclass `cls` from `raw`, appending a message per bad key to `problems`."""
    where = prefix.rstrip(".") or "the card"
    if not isinstance(raw, dict):
        problems.append(f"{where} must be a mapping, got {type(raw).__name__} {shown(raw)}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            near = difflib.get_close_matches(str(key)[:100], names, n=1)
            hint = f"; did you mean {prefix}{near[0]}?" if near else f"; valid keys: {', '.join(names)}"
            problems.append(f"unknown key {prefix}{str(key)[:100]}{hint}")
            continue
        kind = hints[key]
        value = _as_number(value, kind)
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, f"{prefix}{key}.", problems)
        elif _fits(value, kind):
            kwargs[key] = float(value) if kind is float else value
        else:
            problems.append(f"{prefix}{key} must be {_type_name(kind)}, got {shown(value)}")
    return cls(**kwargs)


def _as_number(value: Any, kind: Any) -> Any:
    """YAML 1.1 reads `1e-4` (no dot) as a string; a float field takes it as the number meant."""
    if isinstance(value, str) and (kind is float or float in typing.get_args(kind)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _fits(value: Any, kind: Any) -> bool:
    origin = typing.get_origin(kind)
    if origin is Literal:  # one of a few words
        return isinstance(value, str) and value in typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(kind))
    if origin is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _type_name(kind: Any) -> str:
    """What a value of `kind` may be, as a card's error says it: "auto, vllm or transformers"."""
    words = _type_words(kind)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _type_words(kind: Any) -> list[str]:
    args, origin = typing.get_args(kind), typing.get_origin(kind)
    if origin is Literal:
        return list(args)
    if origin is list:
        return [f"a list of {_type_name(args[0])}"]
    if args:
        return [word for arg in args for word in _type_words(arg)]
    names = {type(None): "null", float: "a number", int: "an integer", str: "a string", bool: "true, false"}
    return [names.get(kind, kind.__name__)]


def _check_values(card: Card) -> list[str]:
    """Range and existence checks that types alone cannot express."""
    problems = []
    task = None
    if card.task.name not in task_names():
        problems.append(
            f"task.name {shown(card.task.name)} is not a known task; known tasks: {', '.join(task_names())}"
        )
    else:
        try:
            task = get_task(card.task.name, **card.task.options())
        except TaskError as exc:
            problems.append(str(exc))
    flat = flatten(card.to_dict())
    problems += [p for p in (name_problem(card.name),) if p]
    problems += range_problems(flat)
    if card.train.gradient_accumulation_steps >= 1 and card.train.batch_size % card.train.gradient_accumulation_steps:
        problems.append(
            f"train.batch_size={card.train.batch_size} pairs per step cannot be split into "
            f"train.gradient_accumulation_steps={card.train.gradient_accumulation_steps} equal micro-batches; "
            "pick a divisor"
        )
    if not card.sampling.temperatures:
        problems.append("sampling.temperatures must list at least one temperature")
    problems += _objective_problems(card, task)
    # Relative to the working directory, as the loader reads it (not to the card's folder).
    if card.task.data_dir is not None and not Path(card.task.data_dir).expanduser().is_dir():
        problems.append(
            f"task.data_dir {shown(card.task.data_dir)} is not a folder; point it at a folder of "
            "{split}.jsonl or {split}.parquet files, or remove it to load from the Hub"
        )
    return problems


def _objective_problems(card: Card, task) -> list[str]:
    problems = []
    for key, name, valid in [
        ("train.objective", card.train.objective, list(objectives.OBJECTIVES)),
        *(("ablations", a, list(objectives.ABLATIONS)) for a in card.ablations),
    ]:
        if name not in valid:
            near = difflib.get_close_matches(name, valid, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            problems.append(f"{key} has {name!r}; {hint}choose from {', '.join(valid)}")
    gold = [
        n
        for n in (card.train.objective, *card.ablations)
        if n in objectives.ABLATIONS and objectives.ABLATIONS[n].objective.needs_gold
    ]
    if task is not None and gold and not task.has_solutions:
        others = [o.name for o in objectives.OBJECTIVES.values() if not o.needs_gold]
        problems.append(
            f"objective {gold[0]} trains on gold worked solutions, and task {card.task.name} has none (only "
            f"answer keys); choose {', '.join(others[:-1])} or {others[-1]}"
        )
    return problems
