"""SSKD's losses (kdlab.losses.selfsupervised) against an independent float64 reference of the formulas in
docs/methods.md#sskd, written with plain Python loops and `math` (no torch ops), in the layout of the authors'
`student.py` (github.com/xuguodong03/SSKD): the four views of one image are adjacent there (row 4b + v), so the
reference builds the similarity matrix in that order from the view-major tensors, then ranks, filters and averages
the rows itself. Ranking ties between wrong rows are decided by row order in kdlab's view-major layout (the
authors' unstable sort leaves them open), so the reference ranks in that order."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.losses.selfsupervised import (
    rank_keep,
    rotate_views,
    rotation_similarity,
    sskd_contrastive,
    sskd_similarity,
    sskd_transform,
)

B, V, K, D = 5, 4, 7, 6


def grid(rows: int, cols: int, a: float, c: float, scale: float = 2.0) -> torch.Tensor:
    return torch.tensor([[scale * math.sin(a * i + c * j + 0.3) for j in range(cols)] for i in range(rows)],
                        dtype=torch.float64)


def softmax(row, t):
    m = max(row)
    e = [math.exp((x - m) / t) for x in row]
    z = sum(e)
    return [x / z for x in e]


def kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def author_rows(t: torch.Tensor) -> list[list[float]]:
    """View-major rows -> the authors' image-major order (row 4b + v = view v of image b)."""
    rows = t.tolist()
    return [rows[v * B + b] for b in range(B) for v in range(V)]


def ref_keep(scores: list[list[float]], labels: list[int], ratio: float) -> list[int]:
    """Rows kept by the error-level ranking: rank = position of the label in the descending order."""
    ranks = [sorted(range(len(r)), key=lambda j: -r[j]).index(lab) for r, lab in zip(scores, labels)]
    wrong = sum(1 for r in ranks if r > 0)
    keep = len(ranks) - wrong + int(wrong * ratio)
    return sorted(sorted(range(len(ranks)), key=lambda i: ranks[i])[:keep])


def ref_kd_rows(s_rows, t_rows, temp, keep):
    return sum(kl(softmax(t_rows[i], temp), softmax(s_rows[i], temp)) for i in keep) / len(keep) * temp**2


def ref_similarity(proj: torch.Tensor) -> list[list[float]]:
    """The authors' similarity matrix: rows = rotated views in image-major order (3b + v - 1), columns = images."""
    rows = author_rows(proj)
    normal = [rows[4 * b] for b in range(B)]
    rotated = [rows[4 * b + v] for b in range(B) for v in range(1, V)]
    return [[cos(a, n) for n in normal] for a in rotated]


def to_view_major_rotated(matrix: list[list[float]]) -> list[list[float]]:
    """Rows 3b + v - 1 (authors) -> rows (v - 1)·B + b (kdlab)."""
    return [matrix[3 * b + v - 1] for v in range(1, V) for b in range(B)]


def test_rotate_views_is_view_major():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = rotate_views(x)
    assert out.shape == (8, 3, 4, 4)
    assert torch.equal(out[:2], x)
    for k in range(4):
        assert torch.equal(out[2 * k + 1], torch.rot90(x[1], k, dims=(1, 2)))
    with pytest.raises(ValueError, match="square"):
        rotate_views(torch.zeros(2, 3, 4, 5))


def test_rotation_similarity_matches_reference():
    proj = grid(V * B, D, 0.7, 1.3)
    expected = to_view_major_rotated(ref_similarity(proj))
    got = rotation_similarity(proj, V)
    assert got.shape == (3 * B, B)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("ratio", [1.0, 0.75, 0.5, 0.0])
def test_transform_term_matches_reference(ratio):
    s, t = grid(V * B, K, 0.9, 0.4), grid(V * B, K, 0.35, 1.1, scale=3.0)
    targets = torch.tensor([0, 3, 6, 2, 5])
    temp = 4.0
    # reference: the rotated rows (ranked in kdlab's view-major order, which decides ties between wrong rows of
    # equal rank), labels = the image's label, ranks from the teacher's tempered probabilities
    s_rows, t_rows = s.tolist()[B:], t.tolist()[B:]
    labels = [int(targets[i % B]) for i in range(3 * B)]
    keep = ref_keep([softmax(r, temp) for r in t_rows], labels, ratio)
    expected = ref_kd_rows(s_rows, t_rows, temp, keep)
    got = sskd_transform(s, t, targets, V, temperature=temp, wrong_ratio=ratio)
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("ratio", [0.75, 1.0, 0.2])
def test_similarity_term_matches_reference(ratio):
    ps, pt = grid(V * B, D, 0.61, 0.9), grid(V * B, D, 1.7, 0.45)
    s_sim, t_sim = to_view_major_rotated(ref_similarity(ps)), to_view_major_rotated(ref_similarity(pt))
    labels = [i % B for i in range(3 * B)]
    keep = ref_keep(t_sim, labels, ratio)
    assert len(keep) < 3 * B or ratio == 1.0  # the teacher gets some rows wrong: the filter matters
    expected = ref_kd_rows(s_sim, t_sim, 0.5, keep)
    got = sskd_similarity(rotation_similarity(ps, V), rotation_similarity(pt, V), temperature=0.5,
                          wrong_ratio=ratio)
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_contrastive_matches_reference():
    proj = grid(V * B, D, 0.52, 1.9)
    sim = ref_similarity(proj)
    expected = sum(-math.log(softmax(row, 1.0)[i // 3]) for i, row in enumerate(sim)) / len(sim)
    assert sskd_contrastive(rotation_similarity(proj, V)).item() == pytest.approx(expected, rel=1e-10)


def test_rank_keep_keeps_right_rows_and_best_wrong_ones():
    scores = torch.tensor([[3.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 3.0, 2.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 0, 2, 0])  # ranks 0, 2, 1, 2
    assert rank_keep(scores, labels, 1.0).tolist() == [0, 1, 2, 3]
    assert rank_keep(scores, labels, 0.5).tolist() == [0, 2]  # int(3 * 0.5) = 1 wrong row: the best-ranked
    assert rank_keep(scores, labels, 0.0).tolist() == [0]


def test_teacher_side_gets_no_gradient_and_student_does():
    s = grid(V * B, K, 0.9, 0.4).requires_grad_()
    t = grid(V * B, K, 0.35, 1.1).requires_grad_()
    sskd_transform(s, t, torch.zeros(B, dtype=torch.long), V).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    ps, pt = grid(V * B, D, 0.61, 0.9).requires_grad_(), grid(V * B, D, 1.7, 0.45).requires_grad_()
    sskd_similarity(rotation_similarity(ps), rotation_similarity(pt)).backward()
    assert pt.grad is None and ps.grad.abs().sum() > 0


@pytest.mark.parametrize("call, message", [
    (lambda: rotation_similarity(torch.zeros(6, 3), 4), "multiple of views"),
    (lambda: sskd_transform(torch.zeros(8, 3), torch.zeros(8, 3), torch.zeros(3, dtype=torch.long)), "targets"),
    (lambda: sskd_similarity(torch.zeros(6, 2), torch.zeros(6, 3)), "equal"),
    (lambda: rank_keep(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 1.5), "wrong_ratio"),
    (lambda: sskd_transform(torch.zeros(8, 3), torch.zeros(8, 3), torch.zeros(2, dtype=torch.long),
                            temperature=0.0), "temperature"),
])
def test_misuse_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
