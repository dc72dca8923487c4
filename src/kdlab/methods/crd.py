"""CRD: Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020 (arXiv:1910.10699).

Contrastive representation distillation with a memory of past embeddings, as the authors'
github.com/HobbitLong/RepDistiller (`crd/criterion.py`, `crd/memory.py`). Loss, keys and defaults:
docs/methods.md#crd.

The pooled penultimate embeddings of both networks go through trainable linear heads and L2
normalisation; `kdlab.methods.crd_memory.CRDMemory` holds the memories, samples the negatives and returns
the NCE loss of both anchor directions (`kdlab.losses.crd_nce`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, EmbeddingMethod
from kdlab.methods.crd_memory import CRDMemory
from kdlab.methods.stages import flat_width


class Embed(nn.Module):
    """Linear head + L2 normalisation (RepDistiller `crd/criterion.py` Embed)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


@register
class CRD(EmbeddingMethod):
    """Contrastive representation distillation (Tian, Krishnan, Isola, ICLR 2020).

    s = normalize(W_s f_s), t = normalize(W_t f_t) (128-d, both heads trainable; the teacher head gets
    gradient from the teacher-anchor term). Loss = NCE(student anchor vs teacher memory) + NCE(teacher
    anchor vs student memory) with K negatives of other classes, τ, Z fixed on the first batch, memory
    momentum m. `mode='bank'` (default, RepDistiller 'exact'): (N, 128) banks indexed by the batch's
    dataset indices, N = len(train_targets); needs the training labels and `indices`. `mode='queue'`: FIFO
    queues of `queue_size` (0 → num_negatives) past embeddings, same-class entries masked; memory does
    not grow with N and neither labels of the whole set nor indices are needed (without train_targets,
    N := queue_size, which only moves the ε term). Defaults: weight 0.8, feat_dim 128, num_negatives
    16384, temperature 0.07, momentum 0.5 (RepDistiller `-b 0.8 --feat_dim 128 --nce_k 16384 --nce_t 0.07
    --nce_m 0.5`; mdistiller `CRD.*`), CE 1 (use `kd+crd` with CE 1 for RepDistiller's CRD+KD).
    """

    name = "crd"
    paper = "Tian, Krishnan, Isola. Contrastive Representation Distillation. ICLR 2020 (arXiv:1910.10699)"
    defaults = {"weight": 0.8, "feat_dim": 128, "num_negatives": 16384, "temperature": 0.07, "momentum": 0.5,
                "mode": "bank", "queue_size": 0}
    ce_weight = 1.0

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        if self.hp["mode"] not in ("bank", "queue"):
            raise KdlabError(f"method.crd.mode must be 'bank' or 'queue', got {self.hp['mode']!r}")
        for key in ("feat_dim", "num_negatives"):
            if self.hp[key] < 1:
                raise KdlabError(f"method.crd.{key} must be >= 1, got {self.hp[key]}; use {self.defaults[key]}")
        if self.hp["queue_size"] < 0:
            raise KdlabError(f"method.crd.queue_size must be >= 0 (0 = num_negatives), got {self.hp['queue_size']}")
        if self.hp["temperature"] <= 0:
            raise KdlabError(f"method.crd.temperature must be > 0, got {self.hp['temperature']}; use 0.07")
        if not 0 <= self.hp["momentum"] < 1:
            raise KdlabError(f"method.crd.momentum must be in [0, 1), got {self.hp['momentum']}; use 0.5")

    def build(self, ctx: BuildContext) -> None:
        dim = self.hp["feat_dim"]
        self.embed_student = Embed(flat_width(ctx.student_shapes["embedding"], "student embedding"), dim)
        self.embed_teacher = Embed(flat_width(ctx.teacher_shapes["embedding"], "teacher embedding"), dim)
        bank = self.hp["mode"] == "bank"
        targets = ctx.train_targets
        if targets is None and bank:
            raise KdlabError("crd (mode='bank') needs the labels of the whole training set and the batches' dataset "
                             "indices: pass train_targets= to DistillationLoss (kdlab distill does), or use "
                             "method.crd.mode=queue")
        if targets is not None:
            targets = torch.as_tensor(targets).long().flatten()
        queue_size = self.hp["queue_size"] or self.hp["num_negatives"]
        n_data = len(targets) if targets is not None else queue_size
        # The negative sampler's seed follows the global seed (kdlab seeds it per run), so runs differ by seed.
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        self.memory = CRDMemory(n_data=n_data, feature_dim=dim, num_negatives=self.hp["num_negatives"],
                                temperature=self.hp["temperature"], momentum=self.hp["momentum"],
                                mode=self.hp["mode"], queue_size=None if bank else queue_size,
                                targets=targets if bank else None, seed=seed)
        # With a data fraction the labels cover a subset while indices address the full split: when the
        # context says which full-split positions the labels belong to, map indices to memory rows.
        positions = getattr(ctx, "train_indices", None)
        self.register_buffer("row_of_index", None, persistent=False)
        if bank and positions is not None:
            positions = torch.as_tensor(positions).long().flatten()
            if positions.numel() != n_data:
                raise KdlabError(f"crd: {positions.numel()} train_indices for {n_data} train_targets; pass one "
                                 f"full-split position per label")
            lookup = torch.full((int(positions.max()) + 1,), -1, dtype=torch.long)
            lookup[positions] = torch.arange(n_data)
            self.row_of_index = lookup

    def memory_rows(self, indices: torch.Tensor | None, batch_size: int, device: torch.device) -> torch.Tensor:
        """Rows of the memory for the batch: its dataset indices (bank), a dummy in queue mode."""
        if self.hp["mode"] == "queue":
            return torch.zeros(batch_size, dtype=torch.long, device=device)
        if indices is None:
            raise KdlabError("crd (mode='bank') needs each batch's dataset indices: call the loss as "
                             "loss_fn(images, targets, indices) (kdlab loaders yield them), or use mode=queue")
        indices = indices.long()
        if self.row_of_index is not None:
            lookup = self.row_of_index
            if int(indices.max()) >= lookup.numel() or bool((lookup[indices.to(lookup.device)] < 0).any()):
                raise KdlabError("crd: a batch index is not among the training samples whose labels were given; "
                                 "pass train_targets/indices of the same training set")
            return lookup[indices.to(lookup.device)]
        if int(indices.max()) >= self.memory.n_data or int(indices.min()) < 0:
            raise KdlabError(f"crd: batch indices reach {int(indices.max())} but train_targets holds "
                             f"{self.memory.n_data} labels (a data fraction?); pass the labels of the whole training "
                             f"set indexed like the batches' indices, or use method.crd.mode=queue")
        return indices

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        s = self.embed_student(batch.student["embedding"])
        t = self.embed_teacher(batch.teacher["embedding"])
        rows = self.memory_rows(batch.indices, s.shape[0], s.device)
        return {"crd": self.memory(s, t, rows, batch.targets)}


__all__ = ["CRD", "Embed"]
