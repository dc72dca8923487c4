"""docs/results-cpu.md holds what `kdlab report` makes of the committed protocol runs, verbatim."""

import contextlib
import io
from pathlib import Path

from kdlab.cli import main

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "results-cpu.md"
RUNS = REPO / "docs" / "results-cpu" / "runs"


LONG_RUNS = REPO / "docs" / "results-cpu" / "runs-24ep"  # the 24-epoch check (configs/sweeps/cpu-cifar100-24ep.yaml)


def report_block(name: str = "report") -> str:
    text = DOC.read_text()
    start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
    return text[text.index(start) + len(start):text.index(end)]


def report_of(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", *args]) == 0
    return out.getvalue().strip()


def test_results_doc_is_the_report_of_the_committed_runs():
    assert report_block().strip() == report_of(str(RUNS), "--epoch", "both", "--metrics", "top1,ece")


def test_long_schedule_table_is_the_report_of_its_committed_runs():
    # Its teacher's run files are committed beside the students, so the report never reads the disk's runs/.
    assert (LONG_RUNS / "cifar100" / "teachers" / "resnet20" / "s0" / "summary.json").is_file()
    assert report_block("report-24ep").strip() == report_of(str(LONG_RUNS), "--epoch", "last", "--metrics",
                                                             "top1,ece")


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
