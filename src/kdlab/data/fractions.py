"""Seeded, class-stratified subsets of a training set (for data-fraction experiments)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from kdlab.errors import KdlabError

__all__ = ["stratified_subset", "stratified_count", "check_fraction"]


def check_fraction(fraction: object) -> float:
    """Return ``fraction`` as a float in (0, 1] or raise KdlabError saying what is wrong."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise KdlabError(f"data fraction must be a number in (0, 1], got {fraction!r}")
    value = float(fraction)
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise KdlabError(f"data fraction must be in (0, 1] (e.g. 0.1 for 10%), got {fraction!r}")
    return value


def stratified_subset(
    targets: torch.Tensor | Sequence[int], fraction: float, seed: int = 0
) -> torch.Tensor:
    """Sorted int64 indices of a per-class proportional subset: round(fraction * n_c), at least 1 per class.

    One seeded permutation is shared by all classes and each class keeps its first samples in that
    order, so for a fixed seed a smaller fraction is a subset of a larger one.
    """
    fraction = check_fraction(fraction)
    targets = torch.as_tensor(targets, dtype=torch.int64).reshape(-1)
    n = targets.numel()
    if fraction == 1.0 or n == 0:
        return torch.arange(n, dtype=torch.int64)
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=generator)
    # Stable sort of the permuted labels groups each class while keeping the random order inside it.
    permuted = targets[perm]
    order = torch.sort(permuted, stable=True).indices
    grouped_labels = permuted[order]
    classes, counts = torch.unique_consecutive(grouped_labels, return_counts=True)
    keep_per_class = torch.clamp(torch.round(counts.double() * fraction).long(), min=1)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(n) - torch.repeat_interleave(starts, counts)
    keep = rank_in_class < torch.repeat_interleave(keep_per_class, counts)
    return torch.sort(perm[order[keep]]).values


def stratified_count(targets: torch.Tensor | Sequence[int], count: int, seed: int = 0) -> torch.Tensor:
    """Sorted int64 indices of exactly ``count`` samples (all of them when ``count`` >= their number), spread over
    the classes in proportion to their sizes (largest remainders; a class may get none when ``count`` is below
    the number of classes). Seeded like :func:`stratified_subset`: one permutation shared by all classes."""
    targets = torch.as_tensor(targets, dtype=torch.int64).reshape(-1)
    n = targets.numel()
    if count >= n:
        return torch.arange(n, dtype=torch.int64)
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=generator)
    permuted = targets[perm]
    order = torch.sort(permuted, stable=True).indices
    _, counts = torch.unique_consecutive(permuted[order], return_counts=True)
    quota = counts.double() * count / n
    keep_per_class = torch.floor(quota).long()
    short = count - int(keep_per_class.sum())
    if short > 0:  # largest remainders first; ties to the larger class, then the lower label
        remainder = quota - keep_per_class.double()
        ranked = sorted(range(len(counts)), key=lambda c: (-float(remainder[c]), -int(counts[c]), c))
        keep_per_class[ranked[:short]] += 1
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(n) - torch.repeat_interleave(starts, counts)
    keep = rank_in_class < torch.repeat_interleave(keep_per_class, counts)
    return torch.sort(perm[order[keep]]).values
