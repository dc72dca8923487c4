"""docs/results-cpu.md holds what `kdlab report` makes of the committed protocol runs, verbatim."""

import contextlib
import io
from pathlib import Path

from kdlab.cli import main

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "results-cpu.md"
RUNS = REPO / "docs" / "results-cpu" / "runs"


def report_block() -> str:
    text = DOC.read_text()
    start, end = "<!-- report:start -->\n", "<!-- report:end -->"
    return text[text.index(start) + len(start):text.index(end)]


def test_results_doc_is_the_report_of_the_committed_runs():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", str(RUNS), "--epoch", "both", "--metrics", "top1,ece"]) == 0
    assert report_block().strip() == out.getvalue().strip()


def test_protocol_covers_every_method_and_the_required_seeds():
    from kdlab.methods import list_methods

    block = report_block()
    top1 = block.split("### ")[1]  # the first table: top-1, best epoch
    for method in ["baseline", *list_methods()]:  # two seeds each
        row = next((line for line in top1.splitlines() if line.startswith(f"| {method} |")), None)
        assert row is not None and "[n=2]" in row, (method, row)
    for method in ("dml", "dml_e"):  # two seeds of a two-student cohort: n counts students x seeds
        row = next((line for line in top1.splitlines() if line.startswith(f"| {method} |")), None)
        assert row is not None and "[n=4]" in row, (method, row)
