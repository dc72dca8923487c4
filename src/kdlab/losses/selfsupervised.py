"""Self-supervision losses of SSKD (Xu, Liu, Li, Loy, "Knowledge Distillation Meets Self-Supervision", ECCV 2020,
arXiv:2006.07114; authors' code github.com/xuguodong03/SSKD `student.py`). docs/methods.md#sskd.

Every image of a batch of B appears in V views (SSKD: V = 4 rotations by 0/90/180/270 degrees), laid out
view-major: rows [0, B) are the un-rotated images, rows [vB, (v+1)B) their v-th rotation, so the source image of
row r is r mod B. The functions take the outputs of such a (V·B)-row batch, or the matrices derived from it.

* :func:`rotation_similarity`: cosine similarities of the rotated views' projections (rows, (V-1)·B) with the
  un-rotated ones (columns, B).
* :func:`rank_keep`: SSKD's error-level ranking, the rows a teacher gets right plus the best-ranked fraction of the
  rows it gets wrong.
* :func:`sskd_transform`: KD on the rotated views' logits over the kept rows.
* :func:`sskd_similarity`: KD between the students' and the teacher's similarity matrices over the kept rows.
* :func:`sskd_contrastive`: the teacher head's init-stage loss (cross-entropy of each similarity row against the
  column of its source image).

Teacher-side tensors are detached; computation runs in at least float32; misuse raises ValueError.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rotate_views", "rotation_similarity", "rank_keep", "sskd_transform", "sskd_similarity",
           "sskd_contrastive"]


def _f32(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_views(rows: int, views: int, what: str) -> int:
    if views < 2:
        raise ValueError(f"views must be >= 2 (one un-rotated view and at least one transformed), got {views}")
    if rows == 0 or rows % views:
        raise ValueError(f"{what} has {rows} rows, not a positive multiple of views={views}")
    return rows // views


def rotate_views(images: Tensor, views: int = 4) -> Tensor:
    """(B, C, H, W) -> (views·B, C, H, W): the batch, then its rotations by 90, 180, ... degrees (view-major)."""
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotations need square images (N, C, S, S), got shape {tuple(images.shape)}")
    if not 1 <= views <= 4:
        raise ValueError(f"views must be 1..4 rotations, got {views}")
    return torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(views)], dim=0)


def rotation_similarity(projections: Tensor, views: int = 4, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of every transformed view's projection with every un-rotated one: ((V-1)·B, B).

    Row r holds view r // B + 1 of image r mod B (view-major layout); column b the un-rotated image b.
    """
    if projections.dim() != 2:
        raise ValueError(f"projections must be (V*B, D), got shape {tuple(projections.shape)}")
    b = _check_views(projections.shape[0], views, "projections")
    p = _f32(projections)
    normal, rotated = p[:b], p[b:]
    # cos(a, b) = a·b / max(‖a‖‖b‖, eps), as torch.nn.functional.cosine_similarity
    norms = rotated.norm(dim=1, keepdim=True) * normal.norm(dim=1).unsqueeze(0)
    return (rotated @ normal.t()) / norms.clamp_min(eps)


def rank_keep(teacher_scores: Tensor, labels: Tensor, wrong_ratio: float) -> Tensor:
    """SSKD's error-level ranking: indices (ascending) of the rows to distil.

    A row's rank is the position of its label in the teacher's scores sorted in descending order (0: the teacher
    is right). Every right row is kept, plus the `wrong_ratio` fraction (rounded down) of the wrong rows with the
    best ranks; ties keep the earlier row (the authors' code leaves ties to an unstable sort).
    """
    if teacher_scores.dim() != 2 or labels.shape != teacher_scores.shape[:1]:
        raise ValueError(f"teacher_scores must be (N, K) and labels (N,), got {tuple(teacher_scores.shape)} and "
                         f"{tuple(labels.shape)}")
    if not 0.0 <= wrong_ratio <= 1.0:
        raise ValueError(f"wrong_ratio must be in [0, 1], got {wrong_ratio}")
    scores = teacher_scores.detach()
    label_score = scores.gather(1, labels.long().unsqueeze(1))
    # position in a descending sort = number of classes scored strictly higher (ties: the label comes first,
    # as torch.argsort(descending) of distinct floats would put it)
    rank = (scores > label_score).sum(dim=1)
    wrong = int((rank > 0).sum())
    keep = scores.shape[0] - wrong + int(wrong * wrong_ratio)
    order = torch.sort(rank, stable=True).indices[:keep]
    return torch.sort(order).values


def _kl_rows(student: Tensor, teacher: Tensor, temperature: float, rows: Tensor) -> Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)) summed over columns, averaged over `rows` (0 when none)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if rows.numel() == 0:
        return student.sum() * 0.0
    log_s = F.log_softmax(_f32(student)[rows] / temperature, dim=1)
    log_t = F.log_softmax(_f32(teacher).detach()[rows] / temperature, dim=1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=1).mean() * temperature**2


def sskd_transform(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, views: int = 4,
                   temperature: float = 4.0, wrong_ratio: float = 1.0) -> Tensor:
    """KD on the transformed views: T² · batch-mean KL over the rotated rows the teacher ranks well.

    `student_logits`, `teacher_logits`: (V·B, K) outputs of the view-major batch; `targets`: (B,) labels of the
    un-rotated images. Rows are kept by :func:`rank_keep` of the teacher's tempered probabilities against the
    image's label (authors' defaults T = 4 `--tf-T`, ratio 1.0 `--ratio-tf`: every row; outer weight 2.7).
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"student_logits and teacher_logits must be equal (V*B, K), got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    b = _check_views(student_logits.shape[0], views, "student_logits")
    if targets.shape != (b,):
        raise ValueError(f"targets must be ({b},) for {views} views of {b} images, got {tuple(targets.shape)}")
    s, t = student_logits[b:], teacher_logits[b:]
    labels = targets.repeat(views - 1)
    rows = rank_keep(F.softmax(_f32(t).detach() / temperature, dim=1), labels, wrong_ratio)
    return _kl_rows(s, t, temperature, rows)


def sskd_similarity(student_similarity: Tensor, teacher_similarity: Tensor, temperature: float = 0.5,
                    wrong_ratio: float = 0.75) -> Tensor:
    """KD between similarity matrices: T² · batch-mean KL(softmax(S_t/T) ‖ softmax(S_s/T)) over kept rows.

    `*_similarity`: ((V-1)·B, B) from :func:`rotation_similarity`; the "label" of row r is its source image
    r mod B. Rows are kept by :func:`rank_keep` of the teacher's similarities (authors' defaults `--ss-T` 0.5,
    `--ratio-ss` 0.75; outer weight 10).
    """
    if student_similarity.shape != teacher_similarity.shape or student_similarity.dim() != 2:
        raise ValueError(f"similarity matrices must be equal ((V-1)*B, B), got {tuple(student_similarity.shape)} "
                         f"and {tuple(teacher_similarity.shape)}")
    rows_n, b = student_similarity.shape
    if b == 0 or rows_n % b:
        raise ValueError(f"a similarity matrix must be ((V-1)*B, B), got {tuple(student_similarity.shape)}")
    labels = torch.arange(rows_n, device=student_similarity.device) % b
    rows = rank_keep(teacher_similarity, labels, wrong_ratio)
    return _kl_rows(student_similarity, teacher_similarity, temperature, rows)


def sskd_contrastive(similarity: Tensor) -> Tensor:
    """Cross-entropy of each similarity row against its source image's column (no temperature): the loss that
    trains the teacher's self-supervision head in SSKD's first stage (authors' `student.py`, 60 epochs)."""
    if similarity.dim() != 2 or similarity.shape[1] == 0 or similarity.shape[0] % similarity.shape[1]:
        raise ValueError(f"similarity must be ((V-1)*B, B), got shape {tuple(similarity.shape)}")
    labels = torch.arange(similarity.shape[0], device=similarity.device) % similarity.shape[1]
    return F.cross_entropy(_f32(similarity), labels)
