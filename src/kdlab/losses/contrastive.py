"""Contrastive distillation losses: the NCE objective of CRD (Tian et al., ICLR 2020; docs/methods.md#crd).

Stateless pieces only: ``crd_scores`` turns an anchor and its contrast rows into unnormalised scores
exp(<anchor, row> / τ), and ``crd_nce`` is the NCE loss of one anchor direction. The memory (bank or
queue), the negative sampling and the fixed normalisation constant Z live in
``kdlab.methods.crd_memory.CRDMemory``. Nothing is detached from the anchors here: in CRD both linear heads
are trainable and the teacher head receives gradient from the teacher-anchor term.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["crd_scores", "crd_nce"]


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def crd_scores(anchor: Tensor, memory_rows: Tensor, temperature: float = 0.07) -> Tensor:
    """Unnormalised CRD scores exp(<anchor_i, memory_rows_ij> / τ), shape (B, K+1) (docs/methods.md#crd).

    ``anchor`` (B, D) is the L2-normalised embedding of one network; ``memory_rows`` (B, K+1, D) are the
    contrast rows of the *other* network (positive at column 0). The memory rows are detached; the anchor
    keeps its gradient. Divide by Z (see ``CRDMemory``) before ``crd_nce``. Default τ = 0.07 (RepDistiller).
    """
    if anchor.dim() != 2 or memory_rows.dim() != 3:
        raise ValueError(
            f"crd_scores: expected anchor (B, D) and memory rows (B, K+1, D), got {tuple(anchor.shape)} and "
            f"{tuple(memory_rows.shape)}; gather one contrast set per anchor"
        )
    if memory_rows.shape[0] != anchor.shape[0] or memory_rows.shape[2] != anchor.shape[1]:
        raise ValueError(
            f"crd_scores: anchor {tuple(anchor.shape)} does not match memory rows "
            f"{tuple(memory_rows.shape)}; batch and embedding dims must agree "
            "(embed both networks to the memory's feature_dim)"
        )
    if temperature <= 0:
        raise ValueError(f"crd_scores: temperature must be > 0, got {temperature}; use 0.07")
    dtype = _compute_dtype(anchor, memory_rows)
    with torch.autocast(device_type=anchor.device.type, enabled=False):
        rows = memory_rows.detach().to(dtype)
        dots = torch.bmm(rows, anchor.to(dtype).unsqueeze(2)).squeeze(2)
        return torch.exp(dots / temperature)


def crd_nce(
    anchor_memory_scores: Tensor,
    n_data: int,
    eps: float = 1e-7,
    negative_mask: Tensor | None = None,
) -> Tensor:
    """NCE loss of one CRD anchor direction, averaged over the batch (docs/methods.md#crd).

    ``anchor_memory_scores`` (B, K+1) are h = exp(<anchor, memory_j>/τ) / Z with the positive at column 0
    and K negatives after it. With noise probability P_n = 1 / ``n_data``:
    ℓ_i = −log(h_pos / (h_pos + K P_n + ε)) − Σ_neg log(K P_n / (h_j + K P_n + ε)).

    ``negative_mask`` (B, K) bool (optional, used by the queue memory) marks valid negatives: masked-out
    columns contribute nothing and K is replaced per row by its number of valid negatives K_i (the noise
    samples actually drawn), so a fully unmasked call equals the plain formula. CRD's default outer weight
    is 0.8 for the sum of both directions (RepDistiller ``-b 0.8``, mdistiller FEAT_WEIGHT 0.8).
    """
    if anchor_memory_scores.dim() != 2 or anchor_memory_scores.shape[1] < 2:
        raise ValueError(
            f"crd_nce: expected scores (B, K+1) with K >= 1, got {tuple(anchor_memory_scores.shape)}; "
            "put the positive in column 0 and negatives after it"
        )
    if n_data < 1:
        raise ValueError(f"crd_nce: n_data must be >= 1, got {n_data}; pass the training-set size")
    dtype = _compute_dtype(anchor_memory_scores)
    with torch.autocast(device_type=anchor_memory_scores.device.type, enabled=False):
        scores = anchor_memory_scores.to(dtype)
        batch, k = scores.shape[0], scores.shape[1] - 1
        p_n = 1.0 / n_data
        pos, neg = scores[:, 0], scores[:, 1:]
        if negative_mask is None:
            noise = torch.full_like(pos, k * p_n)
            weight = None
        else:
            if negative_mask.shape != neg.shape:
                raise ValueError(
                    f"crd_nce: negative_mask {tuple(negative_mask.shape)} must match the negatives "
                    f"{tuple(neg.shape)}; pass one flag per negative column"
                )
            weight = negative_mask.to(dtype)
            noise = weight.sum(dim=1) * p_n
        log_pos = torch.log(pos / (pos + noise + eps))
        if weight is None:
            log_neg = torch.log(noise.unsqueeze(1) / (neg + noise.unsqueeze(1) + eps))
        else:
            # rows without any valid negative have noise 0; use 1 there (all their columns are masked anyway)
            # so no log(0) reaches the graph, then give masked-out columns weight 0.
            safe = torch.where(noise > 0, noise, torch.ones_like(noise)).unsqueeze(1)
            log_neg = torch.where(weight > 0, torch.log(safe / (neg + safe + eps)), torch.zeros_like(neg))
        return -(log_pos.sum() + log_neg.sum()) / batch
