"""DOT: Zhao, Cui, Song, Liang, "DOT: A Distillation-Oriented Trainer", ICCV 2023 (arXiv:2307.08436).

Not a loss: KD's loss, trained by an SGD variant with momentum β - Δ for the task gradient and β + Δ for the
distillation gradient (kdlab.engine.dot). `--method dot` is KD with that optimizer, as the authors' CIFAR-100 and
ImageNet configs run it (github.com/megvii-research/mdistiller, `configs/cifar100/dot/`); any other method trains
under it with `--optimizer dot`. Δ is `optim.dot_delta` (0.075 on CIFAR, 0.09 on ImageNet). docs/methods.md#dot.
"""

from __future__ import annotations

from kdlab.methods import register
from kdlab.methods.kd import KD


@register
class DOTKD(KD):
    """KD (CE 0.1 / KD 0.9, T 4: mdistiller's KD defaults, which its DOT configs keep) under the DOT optimizer."""

    name = "dot"
    paper = "Zhao, Cui, Song, Liang. DOT: A Distillation-Oriented Trainer. ICCV 2023 (arXiv:2307.08436)"
    optimizer = "dot"


__all__ = ["DOTKD"]
