"""A readable catalogue of the registered methods: `kdlab list methods` and the README's method table.

Both come from the registry, so the documentation cannot drift from the code (a test compares the README
table with `markdown_table()`).
"""

from __future__ import annotations

from kdlab.errors import KdlabError
from kdlab.methods import aliases, get, list_methods

# A CIFAR ResNet's tap table, used to show which taps a method reads on a typical model.
_REFERENCE_POINTS = {
    "stem": "stem", "stage1": "stage1", "stage2": "stage2", "stage3": "stage3",
    "stage1_pre": "stage1.x.preact", "stage2_pre": "stage2.x.preact", "stage3_pre": "stage3.x.preact",
    "final_map": "stage3", "embedding": "flatten", "classifier": "classifier",
}


def method_taps(name: str) -> tuple[list[str], list[str]]:
    """(student taps, teacher taps) the method reads on a 3-stage CIFAR ResNet pair, 'logits' included; for a
    method that refuses that pair (DeiT needs a distilled ViT student) the taps it declares."""
    cls = get(name)
    try:
        student, teacher = cls().taps(_REFERENCE_POINTS, _REFERENCE_POINTS)
    except KdlabError:
        student, teacher = list(cls.student_tap_names), list(cls.teacher_tap_names)
    student = ["logits", *student]
    if cls.needs_teacher and cls().needs_teacher_logits():
        teacher = ["logits", *teacher]
    return student, teacher


def _short(taps: list[str]) -> str:
    return ", ".join(taps) if taps else "—"


def describe(name: str) -> dict[str, str]:
    cls = get(name)
    student, teacher = method_taps(name)
    stages = "init stage, " if cls.has_init_stage else ""
    if cls.optimizer:
        stages += f"optimizer={cls.optimizer}, "
    hp = ", ".join(f"{k}={v}" for k, v in cls.defaults.items())
    return {"name": name, "paper": cls.paper, "student": _short(student),
            "teacher": _short(teacher) if cls.needs_teacher else "no teacher",
            "defaults": f"{stages}ce_weight={cls.ce_weight}, {hp}"}


def text_listing() -> str:
    lines = ["method names are case-insensitive (KD, AT, RKD, ...)"]
    for name in list_methods():
        d = describe(name)
        also = f" (also {', '.join(aliases(name))})" if aliases(name) else ""
        lines.append(f"{name:<13} {d['paper']}{also}\n{'':<13} taps: student [{d['student']}], teacher "
                     f"[{d['teacher']}]\n{'':<13} defaults: {d['defaults']}")
    return "\n".join(lines)


def markdown_table() -> str:
    rows = ["| method | paper | student taps | teacher taps | defaults |", "|---|---|---|---|---|"]
    for name in list_methods():
        d = describe(name)
        rows.append(f"| `{name}` | {d['paper']} | {d['student']} | {d['teacher']} | {d['defaults']} |")
    return "\n".join(rows)


START, END = "<!-- methods:start -->", "<!-- methods:end -->"


def readme_with_table(text: str) -> str:
    """`text` with the part between the method-table markers replaced by the current table."""
    if START not in text or END not in text:
        raise ValueError(f"README has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{markdown_table()}\n{END}{tail}"


if __name__ == "__main__":  # `python -m kdlab.methods.catalog README.md` refreshes the README's table
    import sys
    from pathlib import Path

    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(readme_with_table(path.read_text()))
