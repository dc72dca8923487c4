"""Point labels that never overlap: each label goes to the first of a few places around its point where its text
covers no other label and no marker and stays inside the axes; a label with no free place is left out (the
legend, or the table beside the figure, still names the point). Used by every scatter kdlab draws
(`kdlab report --plots`, `kdlab profile --plot`).

Place the labels after the figure's layout is final (`fig.tight_layout()` first): the test of overlap is made
in display coordinates, which a later change of the axes' size would move.
"""

from __future__ import annotations

from typing import Any

# Offsets in points from the point to the text's anchor, in order of preference: right, left, above, below and
# then further out. (dx, dy, horizontal alignment, vertical alignment)
PLACES = [(4, 2, "left", "bottom"), (4, -2, "left", "top"), (-4, 2, "right", "bottom"), (-4, -2, "right", "top"),
          (0, 6, "center", "bottom"), (0, -6, "center", "top"), (10, 9, "left", "bottom"),
          (10, -9, "left", "top"), (-10, 9, "right", "bottom"), (-10, -9, "right", "top")]
MARKER_RADIUS_PX = 4.0  # half the size of a scatter marker of s~30 at 100 dpi


def overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Whether two boxes (x0, y0, x1, y1) share area (touching edges do not count)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def inside(inner: tuple[float, float, float, float], outer: tuple[float, float, float, float]) -> bool:
    return inner[0] >= outer[0] and inner[1] >= outer[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _box(extent: Any) -> tuple[float, float, float, float]:
    return (float(extent.x0), float(extent.y0), float(extent.x1), float(extent.y1))


def annotate_apart(ax: Any, items: list[tuple[float, float, str]], markers: list[tuple[float, float]] | None = None,
                   fontsize: float = 6, color: str = "0.25") -> list[str]:
    """Label each (x, y, text) of `items` (data coordinates) where it overlaps nothing placed before it, no marker
    (`markers`, data coordinates; default: the labelled points), not the axes' legend and not the axes' edge.
    Returns the texts left out. Items earlier in the list get the better places."""
    renderer = ax.figure.canvas.get_renderer()
    frame = _box(ax.get_window_extent(renderer))
    to_px = ax.transData.transform
    r = MARKER_RADIUS_PX * ax.figure.dpi / 100.0
    taken = [(px - r, py - r, px + r, py + r)
             for px, py in (to_px((mx, my)) for mx, my in (markers if markers is not None else
                                                            [(x, y) for x, y, _ in items]))]
    legend = ax.get_legend()
    if legend is not None:  # a legend drawn inside the axes is covered by no label either
        taken.append(_box(legend.get_window_extent(renderer)))
    left_out = []
    for x, y, text in items:
        for dx, dy, ha, va in PLACES:
            label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                                fontsize=fontsize, color=color)
            box = _box(label.get_window_extent(renderer))
            if inside(box, frame) and not any(overlaps(box, other) for other in taken):
                taken.append(box)
                break
            label.remove()
        else:
            left_out.append(text)
    return left_out


__all__ = ["annotate_apart", "overlaps", "inside", "PLACES"]
