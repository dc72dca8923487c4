"""MLKD: Jin, Wang, Lin, "Multi-Level Logit Distillation", CVPR 2023.

The official code (github.com/Jin-Ying/Multi-Level-Logit-Distillation: `mdistiller/distillers/KD_ours.py`,
`mdistiller/engine/trainer.py` `AugTrainer`, `mdistiller/dataset/cifar100.py`): every image in a weak view (the
loader's crop and flip) and a strong one (FixMatch RandAugment, then Cutout), both networks on both views; KD at
five temperatures (instance level), class-correlation and sample-similarity Gram matrices (class and batch levels),
CE on both views. Loss, keys, defaults and where kdlab follows the code rather than the paper: docs/methods.md#mlkd.
"""

from __future__ import annotations

from typing import Any

import torch

from kdlab import losses
from kdlab.data.augment import cutout, rand_augment_fixmatch
from kdlab.data.memory import epoch_generator
from kdlab.errors import KdlabError
from kdlab.methods import register
from kdlab.methods.base import BuildContext, DistillBatch, Method

STRONG_OPS = 2  # RandAugment(2, 10) of the official strong transform (its magnitude 10 is unused: drawn per op)
CUTOUT = 0.5  # the official Cutout's largest side, as a fraction of the image's
STREAM = 7  # the epoch_generator stream of the strong view's draws (the loaders use 0..6)


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@register
class MLKD(Method):
    """Multi-level logit distillation (Jin et al., CVPR 2023), the official code's loss.

    `views` = 2: rows [0, B) are the batch as loaded (weak view), rows [B, 2B) its strong view (FixMatch RandAugment
    with 2 ops at random magnitudes, then Cutout up to half the side, filled with the dataset's mean colour).
    Terms: 0.1·CE on the strong view (`strong_ce_weight`; the engine's CE is the weak view's), and `kd_weight` 0.9
    times the instance, class and batch terms of `kdlab.losses.mlkd_terms` (T0 = `temperature` 4, with 3, 5, 2, 6).
    """

    name = "mlkd"
    paper = "Jin, Wang, Lin. Multi-Level Logit Distillation. CVPR 2023"
    defaults = {"weight": 1.0, "kd_weight": 0.9, "strong_ce_weight": 0.1, "temperature": 4.0,
                "per_sample_mask": False}
    positive = ("temperature",)
    ce_weight = 0.1
    views = 2

    def __init__(self, **hparams: Any):
        super().__init__(**hparams)
        for key in ("kd_weight", "strong_ce_weight"):
            if not self.hp[key] >= 0:
                raise KdlabError(f"method.mlkd.{key} must be >= 0, got {self.hp[key]}; the authors use "
                                 f"{self.defaults[key]}")
        self.register_buffer("pixel_mean", None, persistent=False)
        self.register_buffer("pixel_std", None, persistent=False)
        # The strong view's draws: step k of rank r uses epoch_generator(seed, k, STREAM, r). The seed is the run's
        # (torch.initial_seed(), which kdlab's setup_runtime sets to config.seed, read without consuming the global
        # stream); seed and step count travel in the checkpoint (get_extra_state), so a resumed run draws what an
        # uninterrupted one would, on every rank, with nothing per rank to save.
        self.seed = int(torch.initial_seed())
        self.steps = 0

    def build(self, ctx: BuildContext) -> None:
        # The loader's batches are normalised, and the strong ops (colour, posterize, solarize, equalize, the grey
        # fill) are defined on pixels in [0, 1]: the strong view un-normalises with the data's own mean and std,
        # which the runner knows (DataInfo) and hands over in the BuildContext; nothing is guessed from a batch.
        if ctx.normalization is None:
            raise KdlabError("method 'mlkd' draws its strong view in pixel space and needs the inputs' normalisation; "
                             "pass normalization=(mean, std) (one value per channel) to DistillationLoss or "
                             "kdlab.distill (kdlab distill passes the dataset's)")
        mean, std = ctx.normalization
        self.pixel_mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.pixel_std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def get_extra_state(self) -> dict[str, int]:
        return {"seed": self.seed, "steps": self.steps}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.seed, self.steps = int(state["seed"]), int(state["steps"])

    def strong_view(self, images: torch.Tensor) -> torch.Tensor:
        """The strong view of a normalised batch: un-normalise, FixMatch RandAugment (2 ops), Cutout filled with the
        mean colour (0 once normalised again), normalise; one step of this method's draws (see `__init__`)."""
        if self.pixel_mean is None:
            raise KdlabError("method 'mlkd' is not built yet; run it through kdlab.DistillationLoss with "
                             "normalization=(mean, std)")
        if images.dim() != 4 or images.shape[1] != self.pixel_mean.shape[1]:
            raise KdlabError(f"method 'mlkd' got images of shape {tuple(images.shape)} and a normalisation of "
                             f"{self.pixel_mean.shape[1]} channels; pass one mean and std value per channel")
        generator = epoch_generator(self.seed, self.steps, STREAM, _rank())
        self.steps += 1
        mean, std = self.pixel_mean.to(images.device), self.pixel_std.to(images.device)
        with torch.autocast(device_type=images.device.type, enabled=False):  # pixel ops in float32
            pixels = (images.float() * std + mean).clamp_(0.0, 1.0)
            pixels = rand_augment_fixmatch(pixels, STRONG_OPS, generator)
            pixels = cutout(pixels, CUTOUT, fill=mean.flatten(), generator=generator)
            strong = ((pixels - mean) / std).to(images.dtype)
        if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
            strong = strong.contiguous(memory_format=torch.channels_last)
        return strong

    def expand_batch(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([images, self.strong_view(images)])

    def forward(self, batch: DistillBatch) -> dict[str, torch.Tensor]:
        if batch.views != self.views:
            raise KdlabError("method 'mlkd' needs the weak and strong view of each image; run it through "
                             "kdlab.DistillationLoss, which expands the batch with `expand_batch`")
        n = batch.targets.shape[0]
        s, t = batch.student_logits, batch.teacher_logits
        hp = self.hp
        instance, level_class, level_batch = losses.mlkd_terms(
            s[:n], t[:n], s[n:], t[n:], temperature=hp["temperature"], per_sample_mask=hp["per_sample_mask"])
        return {
            "mlkd_ce": hp["strong_ce_weight"] * batch.task_loss(s[n:]),
            "mlkd_kd": hp["kd_weight"] * instance,
            "mlkd_cc": hp["kd_weight"] * level_class,
            "mlkd_bc": hp["kd_weight"] * level_batch,
        }


__all__ = ["MLKD"]
