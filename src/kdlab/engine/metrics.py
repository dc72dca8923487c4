"""Classification metrics: top-k accuracy, NLL and expected calibration error (ECE).

`ClassificationMeter` keeps only additive sums (counts, correct, NLL, per-bin confidence/accuracy), so
distributed evaluation is one all-reduce of `meter.state` across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017 and most KD papers


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at #classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(targets[:, None])
    return [int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE = Σ_b (n_b/N)·|acc_b − conf_b| over equal-width bins of the max probability (Naeini et al. 2015),
    as a fraction in [0, 1] (EvalResult reports it in percent)."""
    meter = ClassificationMeter(probs.shape[1], n_bins)
    meter.update_probs(probs, targets)
    return meter.compute().ece / 100.0


@dataclass
class EvalResult:
    """Evaluation summary; accuracies and ECE in percent, NLL in nats per sample."""

    top1: float
    top5: float
    nll: float
    ece: float
    count: int
    bin_confidence: list[float]
    bin_accuracy: list[float]
    bin_count: list[int]
    nonfinite: int = 0  # samples whose logits held NaN or inf: the model diverged, its numbers are NaN

    @property
    def diverged(self) -> bool:
        return self.nonfinite > 0

    def as_dict(self, prefix: str = "test_") -> dict[str, float]:
        return {f"{prefix}top1": self.top1, f"{prefix}top5": self.top5, f"{prefix}nll": self.nll,
                f"{prefix}ece": self.ece}


class ClassificationMeter:
    """Accumulates top-1/top-5, NLL and calibration bins over batches."""

    def __init__(self, num_classes: int, n_bins: int = ECE_BINS):
        self.num_classes = num_classes
        self.n_bins = n_bins
        # [count, correct1, correct5, nll_sum, conf_sum[bins], acc_sum[bins], bin_count[bins], nonfinite]
        self.state = torch.zeros(5 + 3 * n_bins, dtype=torch.float64)

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = logits.detach().float()
        targets = targets.to(logits.device)
        nll = F.cross_entropy(logits, targets, reduction="sum")
        self.state[-1] += float((~torch.isfinite(logits)).any(dim=1).sum())
        self._add(logits.softmax(dim=1), targets, logits, float(nll))

    def update_probs(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        probs = probs.detach().double()
        nll = -probs.gather(1, targets[:, None]).clamp_min(1e-12).log().sum()
        self._add(probs, targets, probs, float(nll))

    def _add(self, probs: torch.Tensor, targets: torch.Tensor, scores: torch.Tensor, nll: float) -> None:
        c1, c5 = topk_correct(scores, targets, (1, 5))
        conf, pred = probs.max(dim=1)
        correct = pred.eq(targets).double().cpu()
        conf = conf.double().cpu()
        # Bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 cannot occur (max prob ≥ 1/K).
        bins = (conf * self.n_bins).ceil().long().clamp(1, self.n_bins) - 1
        n = self.n_bins
        s = self.state
        s[0] += len(targets)
        s[1] += c1
        s[2] += c5
        s[3] += nll
        s[4 : 4 + n] += torch.bincount(bins, weights=conf, minlength=n)
        s[4 + n : 4 + 2 * n] += torch.bincount(bins, weights=correct, minlength=n)
        s[4 + 2 * n : 4 + 3 * n] += torch.bincount(bins, minlength=n).double()

    def compute(self) -> EvalResult:
        n = self.n_bins
        s = self.state
        count = max(float(s[0]), 1.0)
        conf_sum, acc_sum, bin_count = s[4 : 4 + n], s[4 + n : 4 + 2 * n], s[4 + 2 * n : 4 + 3 * n]
        ece = float((conf_sum - acc_sum).abs().sum() / count)
        nonempty = bin_count.clamp_min(1)
        nonfinite = int(s[-1])
        # A top-1 of NaN logits is an artefact of argmax's tie-breaking, not an accuracy.
        scale = float("nan") if nonfinite else 100.0
        return EvalResult(
            top1=scale * float(s[1]) / count,
            top5=scale * float(s[2]) / count,
            nll=float("nan") if nonfinite else float(s[3]) / count,
            ece=scale * ece,
            count=int(s[0]),
            bin_confidence=(conf_sum / nonempty).tolist(),
            bin_accuracy=(acc_sum / nonempty).tolist(),
            bin_count=[int(c) for c in bin_count],
            nonfinite=nonfinite,
        )
