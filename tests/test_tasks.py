"""Tasks load real benchmark rows, render the paper's prompts and give gold answers."""

from __future__ import annotations

import json

import pytest
from conftest import ASSETS, SHARED_DATA, needs_shared_data

from irpo.tasks import TaskError, get_task, split_held_out, task_names
from irpo.tasks.demo import generate_rows


def test_registry_lists_the_four_tasks_and_rejects_unknown_names():
    assert task_names() == ["arc_challenge", "demo", "gsm8k", "math"]
    with pytest.raises(
        TaskError, match=r"unknown task 'gsm8kk'\. Did you mean 'gsm8k'\? Known tasks: arc_challenge, demo, gsm8k, math"
    ):
        get_task("gsm8kk")


def test_gsm8k_gold_is_the_number_after_hashes():
    loaded = get_task("gsm8k").load("train", str(ASSETS / "gsm8k"))
    first = loaded.questions[0]
    assert first.question_id == "gsm8k/train/0"
    assert first.text.startswith("Natalia sold clips to 48 of her friends")
    assert first.gold == "72"
    assert len(loaded.questions) == 40 and loaded.skipped_empty_gold == 0


# The paper's prompts (Pang et al. 2024, App. B.1), word for word, typed here from its text.
GSM8K_PROMPT = (
    "Your task is to answer the question below. Give step by step reasoning before you answer, and when you're "
    'ready to answer, please use the format "Final answer: ..."\nQuestion: {question}\nSolution:'
)
ARC_PROMPT = (
    "Your task is to answer the question below. Give step by step reasoning before you answer, and when you're "
    'ready to answer, conclude using the format "Final answer: (insert letter here)"\nQuestion: {question}\nSolution:'
)
MATH_INSTRUCTION = (
    "Your task is to answer the last question below. Give step by step reasoning before you answer, and when "
    'you\'re ready to answer, please wrap your answer in \\boxed, and conclude using the format "Final answer: ..."'
)


def test_gsm8k_prompt_is_the_papers_byte_for_byte():
    task = get_task("gsm8k")
    question = task.load("test", str(ASSETS / "gsm8k")).questions[0]
    assert task.messages(question)[0]["content"] == GSM8K_PROMPT.format(question=question.text)


def test_arc_prompt_is_the_papers_byte_for_byte_with_lettered_options():
    task = get_task("arc_challenge")
    question = task.load("test", str(ASSETS / "arc_challenge")).questions[0]
    assert "\n(A) " in question.text and "\n(D) " in question.text
    assert task.user_message(question) == ARC_PROMPT.format(question=question.text)


def test_math_prompt_is_the_papers_with_four_fixed_training_exemplars():
    from irpo.tasks.math import FEW_SHOT, FEW_SHOT_IDS

    task = get_task("math")
    question = task.load("test", str(ASSETS / "math")).questions[0]
    message = task.user_message(question)
    assert message.startswith(MATH_INSTRUCTION + "\n\nQuestion: ")
    assert message.endswith(f"\n\nQuestion: {question.text}\nSolution:")
    assert message.count("\nSolution: ") == 4 and message.count("\nFinal answer: ") == 4
    for problem, solution, answer in FEW_SHOT:
        assert f"Question: {problem}\nSolution: {solution}\nFinal answer: {answer}" in message
    assert len(FEW_SHOT_IDS) == 4 and all(i.startswith("train/") for i in FEW_SHOT_IDS)


def test_math_skips_empty_gold_and_counts_it():
    loaded = get_task("math", split_scheme="prm800k").load("train", str(ASSETS / "math"))
    assert loaded.skipped_empty_gold == 1  # train/number_theory/7115.json has an empty \boxed{}
    assert len(loaded.questions) == 30
    assert all(q.gold for q in loaded.questions)
    assert loaded.questions[0].question_id.startswith("train/")


def test_math_prompt_minerva_is_a_card_switch():
    task = get_task("math", prompt="minerva")
    question = task.load("test", str(ASSETS / "math")).questions[0]
    message = task.user_message(question)
    assert message.count("Problem:\n") == 5 and message.count("Final Answer: The final answer is") == 4
    assert message.endswith(f"Problem:\n{question.text}\n\nSolution:")


def test_arc_lists_options_and_keeps_numeric_labels():
    loaded = get_task("arc_challenge", train_subsets=("ARC-Challenge",)).load("train", str(ASSETS / "arc_challenge"))
    first = loaded.questions[0]
    assert first.labels == ("A", "B", "C", "D") and first.gold in first.labels
    assert "\n(A) " in first.text
    numeric = [q for q in loaded.questions if q.labels[0] == "1"]
    assert len(numeric) == 3 and all(q.gold in q.labels for q in numeric)
    assert "\n(1) " in get_task("arc_challenge").user_message(numeric[0])


@needs_shared_data
@pytest.mark.parametrize(
    "name,options,rows,skipped",
    [
        ("gsm8k", {}, 7473, 0),
        ("math", {}, 7500, 6),  # the paper's split: 2 empty golds + the 4 prompt exemplars
        ("math", {"split_scheme": "prm800k"}, 12000, 6),
        ("arc_challenge", {}, 2251 + 1119, 0),  # ARC-Easy's and ARC-Challenge's training sets, as the paper
        ("arc_challenge", {"train_subsets": ("ARC-Challenge",)}, 1119, 0),
    ],
)
def test_full_training_splits_load(name, options, rows, skipped):
    loaded = get_task(name, **options).load("train", str(SHARED_DATA / name))
    assert len(loaded.questions) + loaded.skipped_empty_gold == rows
    assert loaded.skipped_empty_gold == skipped
    assert len({q.question_id for q in loaded.questions}) == len(loaded.questions)


def test_malformed_json_line_names_file_and_line(tmp_path):
    lines = (ASSETS / "gsm8k" / "train.jsonl").read_text().splitlines()[:3]
    (tmp_path / "train.jsonl").write_text("\n".join([lines[0], lines[1], '{"question": "broken', lines[2]]) + "\n")
    with pytest.raises(TaskError, match=r"train.jsonl line 3 is not valid JSON .*fix or remove it"):
        get_task("gsm8k").load("train", str(tmp_path))


def test_row_missing_a_field_names_row_and_fields(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(TaskError, match=r"row 1 has no field answer \(task gsm8k needs question, answer\)"):
        get_task("gsm8k").load("train", str(tmp_path))
    (tmp_path / "train.jsonl").write_text("[1, 2]\n")
    with pytest.raises(TaskError, match="row 1 is list, not a JSON object"):
        get_task("gsm8k").load("train", str(tmp_path))


def test_empty_dataset_and_missing_split_are_errors(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    with pytest.raises(TaskError, match="has no usable questions"):
        get_task("gsm8k").load("train", str(tmp_path))
    with pytest.raises(TaskError, match="no validation.jsonl or validation.parquet in"):
        get_task("gsm8k").load("validation", str(tmp_path))


def test_parquet_files_load_like_jsonl(tmp_path):
    import polars as pl

    pl.read_ndjson(ASSETS / "gsm8k" / "train.jsonl").write_parquet(tmp_path / "train.parquet")
    from_parquet = get_task("gsm8k").load("train", str(tmp_path)).questions
    assert from_parquet == get_task("gsm8k").load("train", str(ASSETS / "gsm8k")).questions


def test_hub_failure_says_how_to_use_local_files(monkeypatch):
    """The Hub is unreachable here; offline mode makes that fail fast instead of timing out."""
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TaskError, match=r"could not load hf://openai/gsm8k/main split train .* set task.data_dir"):
        get_task("gsm8k").load("train")


def test_held_out_split_is_disjoint_stable_and_seed_free():
    questions = get_task("demo").load("train").questions
    train, held = split_held_out(questions, 100)
    assert len(held) == 100 and len(train) == len(questions) - 100
    assert not {q.question_id for q in train} & {q.question_id for q in held}
    reordered = split_held_out(list(reversed(questions)), 100)[1]
    assert {q.question_id for q in reordered} == {q.question_id for q in held}  # order of the file does not matter
    with pytest.raises(TaskError, match="lower task.held_out"):
        split_held_out(questions[:5], 5)


def test_demo_task_is_deterministic_and_splits_do_not_overlap():
    train, test = generate_rows("train"), generate_rows("test")
    assert train == generate_rows("train") and len(train) == 1200 and len(test) == 300
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    q = get_task("demo").load("test").questions[0]
    assert int(q.gold) > 0 and 'finish with "The answer is N."' in get_task("demo").user_message(q)


def test_gsm8k_gold_solution_drops_calculator_notes_and_ends_in_the_answer_phrase():
    row = {"question": "Q?", "answer": "She sold 48/2 = <<48/2=24>>24 clips.\n#### 1,024"}
    question = get_task("gsm8k").parse_row(row, "train", 0)
    assert question.solution == "She sold 48/2 = 24 clips.\nFinal answer: 1024"


@needs_shared_data
@pytest.mark.slow  # 7,500 MATH solutions through math-verify: ~45 s
@pytest.mark.parametrize("name,ungraded", [("demo", 0), ("gsm8k", 0), ("math", 1)])
def test_gold_solutions_grade_as_correct_well_formed_answers(name, ungraded):
    """What sft_gold trains on must be what the reward calls right; real data, the real grader."""
    from irpo import grading

    task = get_task(name)
    questions = task.load("train", None if name == "demo" else str(SHARED_DATA / name)).questions
    assert task.has_solutions and all(q.solution for q in questions)
    grades = {q.question_id: grading.grade(task, q.solution, q.gold) for q in questions}
    # A stalled machine can hold a verification past GRADE_TIMEOUT_S: that answer is then wrong
    # with timed_out=True, by design, and remembered so. CI once stalled on two consecutive simple
    # fractions. This test is about the verdict, not the machine: those are graded again afresh.
    stalled = [q for q in questions if grades[q.question_id].timed_out]
    assert len(stalled) <= 5, [q.question_id for q in stalled[:5]]
    grading._PARSED.clear()
    grading._VERIFIED.clear()
    grades |= {q.question_id: grading.grade(task, q.solution, q.gold) for q in stalled}
    failing = [qid for qid, g in grades.items() if not (g.correct and g.well_formed)]
    # MATH: one gold answer math-verify cannot match to itself after extraction ("6, 8\text{, and }10").
    assert len(failing) == ungraded, failing[:5]


def test_arc_has_no_gold_solutions():
    task = get_task("arc_challenge")
    rows = [json.loads(line) for line in (ASSETS / "arc_challenge" / "train.jsonl").read_text().splitlines()]
    assert not task.has_solutions and all(task.parse_row(r, "train", i).solution is None for i, r in enumerate(rows))


@needs_shared_data
def test_math_paper_split_is_the_original_7500_5000_and_disjoint():
    task = get_task("math")
    train, test = (task.load(split, str(SHARED_DATA / "math")) for split in ("train", "test"))
    assert (
        len(train.questions) + train.skipped_empty_gold == 7500
        and len(test.questions) + test.skipped_empty_gold == 5000
    )
    assert all(q.question_id.startswith("train/") for q in train.questions)
    assert all(q.question_id.startswith("test/") for q in test.questions)
    assert not {q.question_id for q in train.questions} & {q.question_id for q in test.questions}


def test_math_paper_split_needs_unique_ids(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    with pytest.raises(TaskError, match="has no unique_id, which the paper split needs.*task.split_scheme=prm800k"):
        get_task("math").load("train", str(tmp_path))


def test_task_options_are_checked_with_the_valid_values():
    with pytest.raises(TaskError, match="task.split_scheme has 'full'; MATH's split schemes are paper, prm800k"):
        get_task("math", split_scheme="full")
    with pytest.raises(TaskError, match="task gsm8k has no option task.prompt; it takes no options"):
        get_task("gsm8k", prompt="paper")
    with pytest.raises(TaskError, match="task.train_subsets has \\['ARC-Hard'\\]; choose from ARC-Easy, ARC-Challenge"):
        get_task("arc_challenge", train_subsets=("ARC-Hard",))


def test_arc_without_easy_files_says_where_to_put_them(tmp_path):
    (tmp_path / "train.jsonl").write_text((ASSETS / "arc_challenge" / "train.jsonl").read_text())
    with pytest.raises(TaskError, match="no arc_easy/ folder .* task.train_subsets=\\[ARC-Challenge\\]"):
        get_task("arc_challenge").load("train", str(tmp_path))


def test_every_task_has_its_card_its_lm_eval_yamls_and_says_what_the_paper_reports():
    """What `irpo run --card TASK` and a plain lm-eval user need, for every registered task."""
    from lm_eval.tasks import TaskManager

    from irpo.card_loader import BUNDLED_CARDS, load_card
    from irpo.objectives import ABLATIONS
    from irpo.tasks import PaperResult, task_class
    from irpo_eval.task_yamls import TASKS_DIR, stale_yamls

    assert stale_yamls() == [], "run python -m irpo_eval.task_yamls"
    indexed = TaskManager(include_path=str(TASKS_DIR), include_defaults=False).all_tasks
    for name in task_names():
        assert name in BUNDLED_CARDS and load_card(name).task.name == name
        assert {f"irpo_{name}", f"irpo_{name}_maj"} <= set(indexed)
        results = task_class(name).paper_results
        assert isinstance(results, tuple) and all(isinstance(r, PaperResult) for r in results)
        assert {r.objective for r in results} - {None} <= set(ABLATIONS)  # each names a leaderboard row


def test_a_task_class_registers_itself_and_must_set_what_grading_needs(monkeypatch):
    import irpo.tasks as tasks

    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))  # the classes below vanish with the test

    class Shared(tasks.Task):  # no name: a base of several tasks, not registered
        answer_kind = "number"

    class Sums(Shared):
        name = "sums_here"
        hub_id = "someone/sums"
        license = "mit"
        answer_phrase = "final answer:"
        required_fields = ("q", "a")
        gold_field = "a"
        paper_results = ()

    assert tasks.task_class("sums_here") is Sums and "Shared" not in str(task_names())
    with pytest.raises(TaskError, match=r"task 'no_paper' \(.*NoPaper\) does not set license, paper_results; see"):

        class NoPaper(Shared):  # forgot two of them: said when the module is imported, not at eval time
            name = "no_paper"
            hub_id = "someone/sums"
            answer_phrase = "final answer:"
            required_fields = ("q", "a")
            gold_field = "a"

    assert "no_paper" not in task_names()
    with pytest.raises(TaskError, match=r"two tasks are named 'gsm8k': irpo\.tasks\.gsm8k\.GSM8K and .*Copy; rename"):

        class Copy(Sums):
            name = "gsm8k"


TINY_TASK = '''
"""Sums: "What is 3 + 4?", gold 7. A benchmark added as the tasks package's docstring says."""

from irpo.tasks import Question, Task


class Sums(Task):
    name = "tiny_sums"
    hub_id = "example/tiny-sums"
    license = "mit"
    answer_kind = "number"
    answer_phrase = r"final answer\\s*:"
    required_fields = ("question", "answer")
    gold_field = "answer"
    field_types = {"answer": int}
    paper_results = ()  # not a benchmark of the paper

    def parse_row(self, row, split, index):
        return Question(f"tiny_sums/{split}/{index}", row["question"], str(row["answer"]))

    def user_message(self, question):
        return f"{question.text} Finish with \\"Final answer: N\\"."
'''


def test_adding_a_benchmark_is_one_module_one_card_and_two_written_yamls(tmp_path, monkeypatch):
    """The walkthrough of docs/architecture.md, as a user follows it: drop a module in irpo/tasks/
    (here a folder added to the package's path, so that the test writes nothing into the checkout),
    write a card, generate the YAMLs; then the card loads, the build's prompts come from the task,
    and lm-eval runs the task's docs through the builder's prompt and the reward's grader."""
    import sys

    from lm_eval.tasks import TaskManager

    import irpo.tasks as tasks
    from irpo.card_loader import load_card
    from irpo_eval.lm_tasks import greedy_results
    from irpo_eval.task_yamls import task_yamls, write_yamls

    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
    package = tmp_path / "package"
    package.mkdir()
    (package / "tiny_sums.py").write_text(TINY_TASK)
    monkeypatch.setattr(tasks, "__path__", [*tasks.__path__, str(package)])
    monkeypatch.delitem(sys.modules, "irpo.tasks.tiny_sums", raising=False)
    tasks.discover_tasks()  # what `import irpo.tasks` does: no import line names the new module
    monkeypatch.delitem(sys.modules, "irpo.tasks.tiny_sums")  # undone after the test
    assert "tiny_sums" in task_names()

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"question": f"What is {a} + {b}?", "answer": a + b} for a, b in [(3, 4), (10, 5), (2, 2)]]
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    card_file = tmp_path / "tiny_sums.yaml"
    card_file.write_text(
        f"name: tiny\ntask:\n  name: tiny_sums\n  data_dir: {data}\n  held_out: 1\n"
        "eval:\n  maj_k: 3\n  max_new_tokens: 64\n"
    )
    card = load_card(str(card_file))
    assert card.task.name == "tiny_sums"

    yamls = tmp_path / "yamls"
    yamls.mkdir()
    monkeypatch.setattr("irpo_eval.task_yamls.task_names", lambda: ["tiny_sums"])
    monkeypatch.setattr(
        "irpo_eval.task_yamls.task_yamls",
        lambda task, folder: task_yamls(task, folder, card=str(card_file)),
    )
    assert sorted(p.name for p in write_yamls(yamls)) == ["irpo_tiny_sums.yaml", "irpo_tiny_sums_maj.yaml"]
    manager = TaskManager(include_path=str(yamls), include_defaults=False, metadata={"data_dir": str(data)})
    loaded = manager.load(["irpo_tiny_sums", "irpo_tiny_sums_maj"])["tasks"]
    greedy, maj = loaded["irpo_tiny_sums"], loaded["irpo_tiny_sums_maj"]
    assert maj.config.repeats == 3 and maj.config.generation_kwargs["max_gen_toks"] == 64
    doc = list(greedy.test_docs())[1]
    assert greedy.doc_to_text(doc) == 'What is 10 + 5? Finish with "Final answer: N".'
    assert greedy_results(doc, ["10 + 5 = 15.\nFinal answer: 15"])["greedy_strict"] == 1.0
    assert greedy_results(doc, ["Final answer: 14"])["greedy"] == 0.0


def test_rows_without_gold_are_kept_for_a_vote_and_never_held_out(tmp_path):
    """pairs.label vote or mixed: training rows without a gold answer load with gold "" (kept_without_gold), are
    graded for their answer only, and split_held_out never holds one out (the checks grade against the gold)."""
    from irpo.grading import grade

    rows = [
        {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
        {"question": "What is 3 + 3?", "answer": None},  # no gold at all
        {"question": "What is 4 + 4?", "answer": "worked, then ####"},  # an empty gold
        {"question": "What is 5 + 5?", "answer": "#### 10"},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gsm8k = get_task("gsm8k")
    assert [q.gold for q in gsm8k.load("train", str(tmp_path)).questions] == ["4", "10"]  # the paper's: skipped
    kept = gsm8k.load("train", str(tmp_path), keep_without_gold=True)
    assert [(q.question_id, q.gold, q.has_gold) for q in kept.questions] == [
        ("gsm8k/train/0", "4", True),
        ("gsm8k/train/1", "", False),
        ("gsm8k/train/2", "", False),
        ("gsm8k/train/3", "10", True),
    ]
    assert kept.without_gold == 2 and kept.questions[1].solution is None
    assert "0" not in gsm8k.user_message(kept.questions[1])  # the stand-in gold never reaches a prompt
    assert grade(gsm8k, "3 + 3 = 6. Final answer: 6", "") == grade(gsm8k, "Final answer: 6", "")
    assert grade(gsm8k, "Final answer: 6", "").answer == "6" and not grade(gsm8k, "Final answer: 6", "").correct
    for _ in range(3):
        train, held = split_held_out(kept.questions, 1)
        assert len(held) == 1 and held[0].has_gold and len(train) == 3
    assert split_held_out(kept.questions, 2)[1] == [kept.questions[0], kept.questions[3]]
    with pytest.raises(TaskError, match="only 2 of the 4 training questions have a gold answer"):
        split_held_out(kept.questions, 3)
    assert split_held_out([q for q in kept.questions if not q.has_gold], 0)[1] == []  # nothing held out: fine
    # ARC: an answer key that is missing keeps the row, with its options, when asked to.
    arc = {"id": "Q1", "question": "Which is a gas?", "choices": {"text": ["rock", "air"], "label": ["A", "B"]}}
    (tmp_path / "arc").mkdir()
    (tmp_path / "arc" / "train.jsonl").write_text(json.dumps({**arc, "answerKey": None}) + "\n")
    (question,) = (
        get_task("arc_challenge", train_subsets=["ARC-Challenge"])
        .load("train", str(tmp_path / "arc"), keep_without_gold=True)
        .questions
    )
    assert (question.gold, question.labels, "(B) air" in question.text) == ("", ("A", "B"), True)
