"""runs/NAME/report.html (irpo_run.report), opened from disk in headless Chromium.

Built on the run folder the previous release made (tests/assets/previous_run: an old run, made before
per-question verdicts were kept), a build-only part of it, and a copy into which hostile model text
is written. The report of a run made today, with verdicts and tensorboard on, is in tests/test_loop.py.
"""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
from click.testing import CliRunner
from conftest import open_in_browser

from irpo.runs import RunFolder
from irpo_run.cli import main

PREVIOUS = Path(__file__).parent / "assets" / "previous_run" / "run_folders" / "prev"
HOSTILE = "<script>alert(1)</script> <img src=x onerror=\"document.title='pwned'\"> [click me](https://evil.example)"


def _report(folder: Path) -> Path:
    result = CliRunner().invoke(main, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    assert re.search(rf"report: {re.escape(str(folder))}/report.html \(\d+ kB\)", result.output)
    return folder / "report.html"


def test_the_report_of_an_old_run_folder_opens_offline_and_says_what_it_lacks(tmp_path):
    run = RunFolder(tmp_path / "prev")
    shutil.copytree(PREVIOUS, run.root)
    dom = open_in_browser(_report(run.root), tmp_path / "old.png")
    for section in ("header", "accuracy", "iteration-1", "changed"):
        assert f'id="{section}"' in dom
    assert "irpo run <code>prev</code>" in dom and "M_0" in dom and "M_1" in dom
    assert "<svg" in dom and 'src="data:image/png;base64,' in dom  # the accuracy chart, the log-prob figure
    assert "have no per-question verdicts" in dom
    assert "generations cut off at the token limit" in dom  # the drop table, from the build's counts
    assert "http://" not in dom.replace("http://www.w3.org/2000/svg", "")  # nothing fetched from elsewhere


def test_a_partial_run_says_what_is_not_done(tmp_path):
    run = RunFolder(tmp_path / "prev")
    run.root.mkdir()
    shutil.copy(PREVIOUS / "card.yaml", run.root / "card.yaml")
    shutil.copytree(PREVIOUS / "iter_1", run.iteration(1))  # built only
    dom = open_in_browser(_report(run.root), tmp_path / "partial.png")
    assert "No model is evaluated yet." in dom and "Not trained yet." in dom
    assert dom.count('class="chip done"') == 1 and dom.count('class="chip todo"') == 2  # built; not trained, evaluated
    assert "Example pairs" in dom


def test_model_and_dataset_text_shows_as_text_and_runs_nothing(tmp_path):
    run = RunFolder(tmp_path / "prev")
    shutil.copytree(PREVIOUS, run.root)
    arrow = next((run.pairs(1) / "train").glob("data-*.arrow"))
    pairs = pl.read_ipc_stream(arrow)
    pl.DataFrame(pairs.with_columns(chosen=pl.lit(HOSTILE), gold=pl.lit("</pre><b>gold</b>"))).write_ipc_stream(arrow)
    for name, right in (("M_0", False), ("M_1", True)):  # a question M_1 now gets right, with hostile text
        verdicts = {
            "question_id": ["demo/test/0"],
            "question": [HOSTILE],
            "gold": ["4"],
            "greedy_correct": [right],
            "greedy_strict": [right],
            "greedy_answer": [HOSTILE if right else "5"],
            "greedy_completion": [HOSTILE],
            "maj_correct": [right],
            "maj_answer": ["4"],
        }
        pl.DataFrame(verdicts).write_parquet(run.eval_verdicts(name))
    dom = open_in_browser(_report(run.root), tmp_path / "hostile.png")
    elements = _elements(dom)  # what the browser built: tags and their attributes
    assert "script" not in [tag for tag, _ in elements] and "&lt;/pre&gt;&lt;b&gt;gold&lt;/b&gt;" in dom
    assert not [attrs for tag, attrs in elements if "onerror" in attrs or attrs.get("href") == "https://evil.example"]
    assert [attrs["src"][:22] for tag, attrs in elements if tag == "img"] == ["data:image/png;base64,"]  # the figure
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "[click me](https://evil.example)" in dom
    assert "<title>irpo run prev</title>" in dom  # the onerror never ran
    assert "1 questions M_0 got wrong and M_1 gets right" in dom


def _elements(dom: str) -> list[tuple[str, dict]]:
    class Elements(HTMLParser):
        def __init__(self):
            super().__init__()
            self.found = []

        def handle_starttag(self, tag, attrs):
            self.found.append((tag, dict(attrs)))

    parser = Elements()
    parser.feed(dom)
    return parser.found


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code != 0 and "is not a run folder (no card.yaml)" in result.output
    assert "Traceback" not in result.output


def test_damaged_pairs_or_verdicts_leave_a_report_without_them(tmp_path, caplog):
    run = RunFolder(tmp_path / "prev")
    shutil.copytree(PREVIOUS, run.root)
    next((run.pairs(1) / "train").glob("data-*.arrow")).write_bytes(b"\x00not arrow")
    for name in ("M_0", "M_1"):
        run.eval_verdicts(name).write_bytes(b"PAR1 truncated")
    html = _report(run.root).read_text()
    assert "Example pairs" not in html and "have no per-question verdicts" in html
    assert "no example pairs" in caplog.text and "M_0.verdicts.parquet" in caplog.text


def test_the_header_names_a_reference_other_than_the_papers(tmp_path):
    run = RunFolder(tmp_path / "prev")
    shutil.copytree(PREVIOUS, run.root)
    assert "DPO's reference M_{t-1} (the paper's)" in _report(run.root).read_text()
    card = run.card_file.read_text().replace("train:\n", "train:\n  reference: initial\n", 1)
    run.card_file.write_text(card)
    assert "<b>M_0 at every iteration</b>" in _report(run.root).read_text()
    html = _report(run.root).read_text()
    assert "offline, every question from M_{t-1}" in html and "by the gold answer (the paper's)" in html
    card = card.replace("sampling:\n", "sampling:\n  resample_every: 4\n", 1).replace(
        "pairs:\n", "pairs:\n  label: vote\n", 1
    )
    run.card_file.write_text(card)
    html = _report(run.root).read_text()
    assert "<b>semi-online</b>: a fresh slice of the questions every 4 steps" in html
    assert "<b>by vote</b> (<code>pairs.label=vote</code>, ScPO)" in html
