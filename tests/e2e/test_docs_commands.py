"""Every `kdlab` command line in README.md and docs/*.md is one the CLI accepts.

Each command in a code block is parsed by the real argument parser; for train, distill and mutual the run's
config is also built and validated from it (config files read, keys and values checked), which is what a run
does before it trains; sweep files are planned. Lines with placeholders (`...`, `FILE.yaml`, `[--option]`,
`a | b`) are syntax summaries, not commands, and are left out.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from kdlab import cli
from kdlab.experiments.sweep import load_sweep

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```")
# Shell variables in the docs' loops and their first values (`for s in 0 1; do for v in dml dml_e`).
_VALUES = {"KDLAB_DATA": "/data", "s": "0", "v": "dml"}
_SHELL_VARS = re.compile(r"\$(" + "|".join(_VALUES) + r")\b")


def _code_lines(path: Path) -> list[str]:
    """Lines of the fenced code blocks of a markdown file, with backslash continuations joined."""
    lines, inside, pending = [], False, ""
    for raw in path.read_text().splitlines():
        if _FENCE.match(raw.strip()):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lines.append(line)
    return lines


def _placeholder(token: str) -> bool:
    return ("..." in token or token.startswith("[") or token == "|"
            or bool(re.fullmatch(r"[A-Z][A-Z0-9_:.]*(\.yaml)?", token)))


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for line in _code_lines(path):
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue
            if "kdlab" not in tokens:
                continue
            start = tokens.index("kdlab")
            if start and tokens[start - 1] not in ("-m",) and not tokens[0].endswith("kdlab"):
                if tokens[0] != "kdlab":
                    continue
            argv = [_SHELL_VARS.sub(lambda m: _VALUES[m.group(1)], t) for t in tokens[start + 1:]]
            if not argv or any(_placeholder(t) for t in argv):
                continue
            found.append((f"{path.relative_to(REPO)}: kdlab {' '.join(argv)}", argv))
    return found


COMMANDS = documented_commands()


def test_the_docs_hold_commands_to_check():
    names = {argv[0] for _, argv in COMMANDS}
    assert len(COMMANDS) >= 20 and {"train", "distill", "eval", "sweep", "report", "mutual"} <= names


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_is_accepted(where, argv, monkeypatch):
    monkeypatch.chdir(REPO)  # config paths in the docs are relative to the repository
    args = cli.parse_args(cli.build_parser(), argv)
    assert args.command == argv[0]
    if args.command in ("train", "distill", "mutual") and not getattr(args, "resume", False):
        cli.config_from_args(args)  # reads --config files and validates every key and value
    if args.command == "sweep":
        assert load_sweep(args.file, args.out, args.data_root).runs  # the grid plans, each run's config validated
