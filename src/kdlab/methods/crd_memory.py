"""Stateful contrast memory for CRD (Tian et al., ICLR 2020; docs/methods.md#crd).

``CRDMemory`` holds what the stateless losses in ``kdlab.losses.contrastive`` cannot: the student/teacher
memories, the negative sampler, and the normalisation constants Z_s, Z_t fixed on the first call.

* ``mode='bank'`` (paper / RepDistiller): two (N, D) memory banks, positive = the sample's own row
  ('exact' mode), K negatives drawn uniformly with replacement among samples of other classes, momentum
  update M_i <- normalize(m M_i + (1 - m) e_i) after each training step.
* ``mode='queue'`` (for ImageNet-size data): two FIFO queues of the last ``queue_size`` embeddings with
  their labels; memory does not grow with N. Positive = the current batch's own embedding from the other
  network (detached); negatives = every queue entry, with same-class entries excluded through
  ``crd_nce(negative_mask=...)`` (weight 0, and K replaced per anchor by its count of valid entries).
  The queue starts with random rows (uniform like the bank, label -1 = "no class", always a valid
  negative), which are overwritten within queue_size / B steps.

Determinism: negatives are drawn from a CPU ``torch.Generator`` seeded at construction; its state is saved
in the module's state_dict (``_extra_state``) so a resumed run draws the same negatives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import KdlabError
from kdlab.losses.contrastive import crd_nce, crd_scores

__all__ = ["CRDMemory"]


class CRDMemory(nn.Module):
    """CRD memory + NCE loss for both anchor directions (docs/methods.md#crd).

    All arguments are keyword-only. Defaults are RepDistiller's (K 16384, τ 0.07, m 0.5, dim 128).
    ``n_data`` is the size of the (full) training set that ``indices`` point into; it sets P_n = 1/N and
    Z = N * mean(exp scores) (in queue mode only their ratio matters, so N affects the loss only through ε).
    ``targets`` (N,) are the training labels, required in bank mode for other-class negative sampling
    (ignored in queue mode). In queue mode ``num_negatives`` only sets the default ``queue_size``: every
    other-class queue entry is a negative. The memory only changes in training mode (``.train()``).
    """

    def __init__(
        self,
        *,
        n_data: int,
        feature_dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        mode: str = "bank",
        queue_size: int | None = None,
        targets: Tensor | None = None,
        seed: int = 0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        # mode, feature_dim, num_negatives, temperature, momentum and queue_size come checked from the method's
        # hyperparameters (kdlab.methods.crd.CRD); what only the data decides is checked here.
        if n_data < 1:
            raise KdlabError(f"CRDMemory: n_data={n_data} must be >= 1; pass the training-set size")
        self.n_data = int(n_data)
        self.feature_dim = int(feature_dim)
        self.num_negatives = int(num_negatives)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.mode = mode
        self.eps = float(eps)
        self.seed = int(seed)
        self._generator = torch.Generator(device="cpu")
        self._generator.manual_seed(self.seed)
        # Z_s (student anchor vs teacher memory) and Z_t; a negative value means "not fixed yet".
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        stdv = math.sqrt(3.0 / self.feature_dim)

        if mode == "bank":
            if targets is None:
                raise KdlabError(
                    "CRDMemory(mode='bank'): targets are required to sample other-class negatives; pass the "
                    "training labels (N,) or use mode='queue'"
                )
            targets = torch.as_tensor(targets).long().flatten().cpu()
            if targets.numel() != self.n_data:
                raise KdlabError(
                    f"CRDMemory: got {targets.numel()} targets for n_data={self.n_data}; pass one label per "
                    "training sample (full, unfractioned set)"
                )
            self.queue_size = None
            self.register_buffer("memory_s", self._uniform(self.n_data, stdv))
            self.register_buffer("memory_t", self._uniform(self.n_data, stdv))
            self._build_class_index(targets)
        else:
            self.queue_size = int(queue_size if queue_size is not None else num_negatives)
            self.register_buffer("queue_s", self._uniform(self.queue_size, stdv))
            self.register_buffer("queue_t", self._uniform(self.queue_size, stdv))
            self.register_buffer("queue_labels", torch.full((self.queue_size,), -1, dtype=torch.long))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    # ----------------------------------------------------------------------------------------- set-up

    def _uniform(self, rows: int, stdv: float) -> Tensor:
        """Rows uniform in [-stdv, stdv], stdv = sqrt(3 / D), not normalised (as RepDistiller's memory)."""
        return torch.rand(rows, self.feature_dim, generator=self._generator) * (2 * stdv) - stdv

    def _build_class_index(self, targets: Tensor) -> None:
        """Sort sample indices by class once, so other-class sampling is pure index arithmetic.

        For class c occupying the sorted segment [start_c, start_c + count_c), a uniform draw r in
        [0, N - count_c) maps to position r (before the segment) or r + count_c (after it).
        """
        classes, inverse, counts = torch.unique(targets, return_inverse=True, return_counts=True)
        if classes.numel() < 2:
            raise KdlabError(
                "CRDMemory(mode='bank'): all training samples share one class, so there are no negatives; "
                "CRD needs at least two classes"
            )
        starts = torch.cumsum(counts, 0) - counts
        self.register_buffer("_class_of_sample", inverse, persistent=False)  # dense class id per sample
        self.register_buffer("_sorted_indices", torch.argsort(inverse, stable=True), persistent=False)
        self.register_buffer("_class_start", starts, persistent=False)
        self.register_buffer("_class_count", counts, persistent=False)

    # ---------------------------------------------------------------------------------------- sampling

    def sample_negatives(self, indices: Tensor) -> Tensor:
        """(B, K) dataset indices drawn uniformly with replacement among samples of other classes (bank)."""
        if self.mode != "bank":
            raise KdlabError("CRDMemory.sample_negatives is only used in mode='bank'")
        device = self._sorted_indices.device
        cls = self._class_of_sample[indices.to(device)]
        start = self._class_start[cls].unsqueeze(1)
        count = self._class_count[cls].unsqueeze(1)
        u = torch.rand(indices.shape[0], self.num_negatives, generator=self._generator).to(device)
        r = (u * (self.n_data - count)).long().clamp(max=self.n_data - count - 1)
        pos = torch.where(r < start, r, r + count)
        return self._sorted_indices[pos]

    # ----------------------------------------------------------------------------------------- forward

    def _check(self, student: Tensor, teacher: Tensor, indices: Tensor, targets: Tensor) -> None:
        b = student.shape[0] if student.dim() == 2 else -1
        if student.dim() != 2 or teacher.shape != student.shape or student.shape[1] != self.feature_dim:
            raise KdlabError(
                f"CRDMemory: expected student and teacher embeddings (B, {self.feature_dim}), got "
                f"{tuple(student.shape)} and {tuple(teacher.shape)}; embed both to feature_dim"
            )
        if indices.shape != (b,) or targets.shape != (b,):
            raise KdlabError(
                f"CRDMemory: indices {tuple(indices.shape)} and targets {tuple(targets.shape)} must be "
                f"({b},); pass the batch's dataset indices and labels"
            )
        if self.mode == "bank" and b > 0 and (int(indices.min()) < 0 or int(indices.max()) >= self.n_data):
            raise KdlabError(
                f"CRDMemory: dataset indices must lie in [0, {self.n_data}), got [{int(indices.min())}, "
                f"{int(indices.max())}]; pass indices into the full training set and n_data=its size"
            )

    def _bank_scores(self, anchor: Tensor, memory: Tensor, contrast_idx: Tensor) -> Tensor:
        """exp(<anchor, memory[contrast_idx]> / τ), (B, K+1), via the cheaper of two equivalent routes.

        Gathering rows costs B(K+1)D memory (RepDistiller's route); when the bank is smaller than that
        (CIFAR: N = 50k < (K+1) D = 2.1M) one matmul against the whole bank plus a gather is far cheaper.
        """
        if self.n_data < contrast_idx.shape[1] * self.feature_dim:
            # the clone (N*D, still below the gather's B(K+1)D) keeps the in-place update out of autograd
            with torch.autocast(device_type=anchor.device.type, enabled=False):
                all_dots = anchor.float() @ memory.detach().float().clone().t()  # (B, N)
                return torch.exp(all_dots.gather(1, contrast_idx) / self.temperature)
        return crd_scores(anchor, memory[contrast_idx], temperature=self.temperature)

    def _fix_z(self, name: str, scores: Tensor, valid: Tensor | None = None) -> Tensor:
        """Z = N * mean(exp scores) on the first call (over valid entries), then a fixed buffer."""
        z = getattr(self, name)
        if float(z) < 0:
            with torch.no_grad():
                mean = scores.mean() if valid is None else scores[valid].mean()
                z.copy_(mean * self.n_data)
        return z

    def forward(
        self, student_embedding: Tensor, teacher_embedding: Tensor, indices: Tensor, targets: Tensor
    ) -> Tensor:
        """CRD loss: NCE(student anchor vs teacher memory) + NCE(teacher anchor vs student memory).

        Embeddings (B, D) must already be L2-normalised outputs of the trainable heads; both keep their
        gradients (memory entries never get any). In training mode the memory is updated afterwards under
        no_grad (bank: momentum update of rows ``indices``; queue: enqueue the batch).
        """
        self._check(student_embedding, teacher_embedding, indices, targets)
        with torch.autocast(device_type=student_embedding.device.type, enabled=False):
            s = student_embedding.float()
            t = teacher_embedding.float()
            if self.mode == "bank":
                device = self.memory_s.device
                indices = indices.to(device)
                contrast = torch.cat([indices.unsqueeze(1), self.sample_negatives(indices)], dim=1)
                scores_s = self._bank_scores(s, self.memory_t, contrast)  # student anchor, teacher memory
                scores_t = self._bank_scores(t, self.memory_s, contrast)  # teacher anchor, student memory
                mask = None
                z_s, z_t = self._fix_z("z_s", scores_s), self._fix_z("z_t", scores_t)
            else:
                labels = self.queue_labels
                mask = labels.unsqueeze(0) != targets.to(labels.device).unsqueeze(1)  # (B, Q) other class
                pos_s = (s * t.detach()).sum(1, keepdim=True)
                pos_t = (t * s.detach()).sum(1, keepdim=True)
                # clones: autograd saves the queue for the anchors' gradient, and update() writes in place
                queue_t, queue_s = self.queue_t.clone(), self.queue_s.clone()
                scores_s = torch.exp(torch.cat([pos_s, s @ queue_t.t()], 1) / self.temperature)
                scores_t = torch.exp(torch.cat([pos_t, t @ queue_s.t()], 1) / self.temperature)
                valid = torch.cat([torch.ones_like(mask[:, :1]), mask], 1)
                z_s, z_t = self._fix_z("z_s", scores_s, valid), self._fix_z("z_t", scores_t, valid)
            loss = crd_nce(scores_s / z_s, self.n_data, eps=self.eps, negative_mask=mask)
            loss = loss + crd_nce(scores_t / z_t, self.n_data, eps=self.eps, negative_mask=mask)
        if self.training:
            self.update(student_embedding, teacher_embedding, indices, targets)
        return loss

    @torch.no_grad()
    def update(
        self, student_embedding: Tensor, teacher_embedding: Tensor, indices: Tensor, targets: Tensor
    ) -> None:
        """Write the batch into memory (no gradient): bank momentum update, or FIFO enqueue."""
        s = student_embedding.detach().float()
        t = teacher_embedding.detach().float()
        if self.mode == "bank":
            idx = indices.to(self.memory_s.device)
            for memory, e in ((self.memory_s, s), (self.memory_t, t)):
                new = F.normalize(
                    self.momentum * memory[idx] + (1.0 - self.momentum) * e.to(memory.device), dim=1
                )
                memory.index_copy_(0, idx, new)
            return
        q = self.queue_size
        if s.shape[0] > q:  # only the last q entries would survive anyway
            s, t, targets = s[-q:], t[-q:], targets[-q:]
        n = s.shape[0]
        pos = (self.queue_ptr + torch.arange(n, device=self.queue_ptr.device)) % q
        self.queue_s[pos] = F.normalize(s, dim=1).to(self.queue_s.device)
        self.queue_t[pos] = F.normalize(t, dim=1).to(self.queue_t.device)
        self.queue_labels[pos] = targets.to(self.queue_labels.device).long()
        self.queue_ptr.copy_((self.queue_ptr + n) % q)

    # ------------------------------------------------------------------------------------ checkpointing

    def get_extra_state(self) -> dict:
        """Save the sampler's RNG state with the buffers, so resuming draws the same negatives."""
        return {"rng_state": self._generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        if state and "rng_state" in state:
            self._generator.set_state(state["rng_state"].cpu())

    def extra_repr(self) -> str:
        size = f"queue_size={self.queue_size}" if self.mode == "queue" else f"n_data={self.n_data}"
        return (
            f"mode={self.mode}, {size}, feature_dim={self.feature_dim}, num_negatives={self.num_negatives}, "
            f"temperature={self.temperature}, momentum={self.momentum}"
        )
