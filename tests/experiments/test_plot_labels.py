"""Point labels of kdlab's scatters (kdlab.experiments.labels): in a crowded plot no two labels overlap, none
covers a marker or leaves the axes, and the ones without a free place are reported, not drawn on top."""

import pytest

from kdlab.experiments.labels import annotate_apart, inside, overlaps

pytest.importorskip("matplotlib")


def test_box_geometry():
    assert overlaps((0, 0, 2, 2), (1, 1, 3, 3)) and not overlaps((0, 0, 1, 1), (1, 0, 2, 1))  # edges touch only
    assert inside((1, 1, 2, 2), (0, 0, 3, 3)) and not inside((1, 1, 4, 2), (0, 0, 3, 3))


def boxes(ax):
    renderer = ax.figure.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in ax.texts]


def test_crowded_labels_never_overlap_each_other_markers_or_the_frame():
    from kdlab.experiments.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    # 40 points, half of them in a tight cluster (as the feature methods of a short CPU run are)
    points = [(1.0 + 0.05 * (i % 5), 12.0 + 0.2 * (i // 5), f"method_{i}") for i in range(20)]
    points += [(2.0 + 0.4 * i, 10.0 + 0.9 * i, f"far_{i}") for i in range(20)]
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=28)
    ax.legend(["runs"], loc="upper left")
    fig.tight_layout()
    left_out = annotate_apart(ax, points)
    placed = boxes(ax)
    assert len(placed) + len(left_out) == len(points) and left_out  # the cluster cannot hold every label
    assert len(placed) >= 20  # but most are placed
    for i, a in enumerate(placed):
        for b in placed[i + 1:]:
            assert not overlaps((a.x0, a.y0, a.x1, a.y1), (b.x0, b.y0, b.x1, b.y1))
    frame = ax.get_window_extent(fig.canvas.get_renderer())
    legend = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    marks = [ax.transData.transform((x, y)) for x, y, _ in points]
    for a in placed:
        box = (a.x0, a.y0, a.x1, a.y1)
        assert inside(box, (frame.x0, frame.y0, frame.x1, frame.y1))
        assert not overlaps(box, (legend.x0, legend.y0, legend.x1, legend.y1))
        for mx, my in marks:
            assert not (a.x0 < mx < a.x1 and a.y0 < my < a.y1)  # no marker's centre under a label
    plt.close(fig)
