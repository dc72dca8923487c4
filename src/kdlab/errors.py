"""User-facing errors: one line naming the problem and the fix, printed without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KdlabError(Exception):
    """A problem with the user's input (config, names, files, data). The CLI prints it on one line."""


def closest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest valid name, or '' when nothing is close."""
    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> KdlabError:
    """Error for an unknown model/dataset/method name, suggesting the closest valid one."""
    choices = sorted(choices)
    return KdlabError(
        f"unknown {kind} '{name}'{closest(name, choices)}; run 'kdlab list {kind}s' to see all "
        f"({len(choices)} available)"
    )
