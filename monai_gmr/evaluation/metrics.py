"""Metric accumulators for rotation robustness: masked Dice/IoU (MONAI), exact streaming ROC-AUC, accuracy.

Masking convention (segmentation): the one-hot prediction and the one-hot label are both multiplied by the
validity mask before MONAI's ``DiceMetric`` / ``MeanIoU`` see them, so a masked-out pixel belongs to no class and
counts as neither true positive, false positive nor false negative: the metric is computed on the valid pixels
only. ``ignore_empty=True`` (MONAI default): an image whose label has no pixel of a class inside the mask gives
NaN for that class and is left out of the mean.

ROC-AUC is computed exactly (not from a threshold histogram, which is only approximate): the accumulator keeps
every positive and negative score (4 bytes per pixel per class per view) and at the end counts, for every
positive, the negatives with a lower score plus half of those with an equal score (Mann-Whitney U, ties = 1/2),
which equals the trapezoidal ROC-AUC of ``sklearn.metrics.roc_auc_score`` and MONAI's ``ROCAUCMetric``. This is
hand-written because MONAI's ``compute_roc_auc`` runs a Python loop over all samples (minutes for millions of
pixels) and needs all scores in one tensor.
"""

from __future__ import annotations

import math

import torch
from monai.metrics import DiceMetric, MeanIoU

__all__ = [
    "CLS_METRICS",
    "SEG_METRICS",
    "ExactAUC",
    "ClassificationAccumulator",
    "SegmentationAccumulator",
    "roc_auc_exact",
    "to_probabilities",
]

SEG_METRICS = ("dice", "iou", "auc")
CLS_METRICS = ("accuracy", "auc")
ACTIVATIONS = ("auto", "softmax", "sigmoid", None)


def roc_auc_exact(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact binary ROC-AUC with ties counted as 1/2 (NaN when a class is absent).

    Args:
        scores: 1D scores (higher = more positive).
        labels: 1D 0/1 (or bool) labels of the same length.
    """
    acc = ExactAUC()
    acc.update(scores, labels)
    return acc.compute()


class ExactAUC:
    """Streaming, exact binary ROC-AUC.

    Args:
        storage_device: where scores are kept between updates (default: the device of the first update).
    """

    def __init__(self, storage_device: torch.device | str | None = None) -> None:
        self.storage_device = storage_device
        self.reset()

    def reset(self) -> None:
        self._pos: list[torch.Tensor] = []
        self._neg: list[torch.Tensor] = []

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        scores = scores.detach().reshape(-1)
        labels = labels.detach().reshape(-1).bool()
        if scores.shape != labels.shape:
            raise ValueError(f"scores and labels must have the same number of elements, got {scores.numel()} and {labels.numel()}.")
        if not scores.dtype.is_floating_point:
            scores = scores.double()
        if self.storage_device is not None:
            scores, labels = scores.to(self.storage_device), labels.to(self.storage_device)
        self._pos.append(scores[labels])
        self._neg.append(scores[~labels])

    @property
    def counts(self) -> tuple[int, int]:
        """(positives, negatives) seen so far."""
        return sum(int(p.numel()) for p in self._pos), sum(int(n.numel()) for n in self._neg)

    def compute(self) -> float:
        n_pos, n_neg = self.counts
        if n_pos == 0 or n_neg == 0:
            return math.nan
        pos = torch.cat([p.double() for p in self._pos])
        neg = torch.sort(torch.cat([n.double() for n in self._neg])).values
        lower = torch.searchsorted(neg, pos, side="left")
        upper = torch.searchsorted(neg, pos, side="right")
        u = lower.sum(dtype=torch.float64) + 0.5 * (upper - lower).sum(dtype=torch.float64)
        return float(u) / (float(n_pos) * float(n_neg))


def to_probabilities(y: torch.Tensor, activation: str | None = "auto") -> torch.Tensor:
    """Network outputs ``(N, C, ...)`` -> probabilities: ``"auto"`` = softmax over C when C > 1 else sigmoid;
    ``None`` = outputs already are probabilities."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got activation={activation!r}.")
    if activation is None:
        return y.float()
    if activation == "auto":
        activation = "softmax" if y.shape[1] > 1 else "sigmoid"
    return torch.softmax(y.float(), dim=1) if activation == "softmax" else torch.sigmoid(y.float())


def _class_probs(p: torch.Tensor) -> torch.Tensor:
    """``(N, C, ...)`` probabilities -> ``(N, K, ...)`` with ``K = max(C, 2)`` (binary single-channel expanded)."""
    return torch.cat([1.0 - p, p], dim=1) if p.shape[1] == 1 else p


class SegmentationAccumulator:
    """Masked Dice / IoU / pixel ROC-AUC for one view.

    Args:
        metrics: subset of ``("dice", "iou", "auc")``.
        include_background: include class 0 in Dice/IoU/AUC (for binary tasks ``False`` means foreground only).
        activation: see :func:`to_probabilities`.
        auc_storage: device where AUC scores are accumulated.
    """

    def __init__(
        self,
        metrics: tuple[str, ...] = SEG_METRICS,
        include_background: bool = False,
        activation: str | None = "auto",
        auc_storage: torch.device | str | None = None,
    ) -> None:
        self.metrics = tuple(metrics)
        self.include_background = include_background
        self.activation = activation
        self.auc_storage = auc_storage
        self.dice = DiceMetric(include_background=include_background, reduction="mean", ignore_empty=True)
        self.iou = MeanIoU(include_background=include_background, reduction="mean", ignore_empty=True)
        self.aucs: dict[int, ExactAUC] = {}
        self.num_classes: int | None = None

    def update(self, y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Args:
        y_pred: network outputs ``(N, C, *spatial)`` (logits unless ``activation=None``).
        y: integer class labels ``(N, 1, *spatial)``.
        mask: bool ``(*spatial)`` or ``(N, 1, *spatial)`` of pixels to score (None = all).
        """
        probs = _class_probs(to_probabilities(y_pred, self.activation))
        k = probs.shape[1]
        if self.num_classes is None:
            self.num_classes = k
        labels = y.long()
        lo, hi = torch.aminmax(labels)
        if lo < 0 or hi >= k:
            raise ValueError(
                f"label values must be class indices in [0, {k - 1}] for {y_pred.shape[1]}-channel outputs, got "
                f"range [{int(lo)}, {int(hi)}]; pass label_transform (e.g. binarize for instance maps)."
            )
        pred_idx = probs.argmax(dim=1, keepdim=True)
        m = None if mask is None else mask.to(labels.device).expand_as(labels)
        if "dice" in self.metrics or "iou" in self.metrics:
            # masked-out pixels get index k, which matches no class channel: they belong to no class at all
            classes = torch.arange(k, device=labels.device).reshape(1, k, *([1] * (labels.ndim - 2)))
            p_idx = pred_idx if m is None else torch.where(m, pred_idx, k)
            l_idx = labels if m is None else torch.where(m, labels, k)
            pred_oh = (p_idx == classes).to(probs.dtype)
            lab_oh = (l_idx == classes).to(probs.dtype)
            if "dice" in self.metrics:
                self.dice(y_pred=pred_oh, y=lab_oh)
            if "iou" in self.metrics:
                self.iou(y_pred=pred_oh, y=lab_oh)
        if "auc" in self.metrics:
            sel = None if m is None else m[:, 0]
            for c in range(0 if self.include_background else 1, k):
                sc, lc = probs[:, c], labels[:, 0] == c
                if sel is not None:
                    sc, lc = sc[sel], lc[sel]
                self.aucs.setdefault(c, ExactAUC(self.auc_storage)).update(sc, lc)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if "dice" in self.metrics:
            out["dice"] = _agg(self.dice)
        if "iou" in self.metrics:
            out["iou"] = _agg(self.iou)
        if "auc" in self.metrics:
            vals = [a.compute() for a in self.aucs.values()]
            vals = [v for v in vals if not math.isnan(v)]
            out["auc"] = float(sum(vals) / len(vals)) if vals else math.nan
        return out


def _agg(metric) -> float:
    try:
        v = metric.aggregate()
    except (ValueError, RuntimeError):  # nothing accumulated
        return math.nan
    v = v[0] if isinstance(v, (list, tuple)) else v
    return float(v)


class ClassificationAccumulator:
    """Accuracy and (macro one-vs-rest) ROC-AUC for one view.

    Args:
        metrics: subset of ``("accuracy", "auc")``.
        activation: see :func:`to_probabilities`.
    """

    def __init__(self, metrics: tuple[str, ...] = CLS_METRICS, activation: str | None = "auto") -> None:
        self.metrics = tuple(metrics)
        self.activation = activation
        self.correct = 0
        self.total = 0
        self.aucs: dict[int, ExactAUC] = {}

    def update(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        """Args:
        y_pred: ``(N, C)`` outputs.
        y: ``(N,)`` / ``(N, 1)`` class indices or ``(N, C)`` one-hot.
        """
        probs = _class_probs(to_probabilities(y_pred, self.activation))
        k = probs.shape[1]
        labels = y.argmax(dim=1) if (y.ndim == 2 and y.shape[1] == k and k > 1 and y_pred.shape[1] > 1) else y.reshape(-1)
        labels = labels.long()
        if labels.numel() != probs.shape[0]:
            raise ValueError(f"label must hold one class per sample ({probs.shape[0]}), got shape {tuple(y.shape)}.")
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"label values must be in [0, {k - 1}], got range [{int(labels.min())}, {int(labels.max())}].")
        self.correct += int((probs.argmax(dim=1) == labels).sum())
        self.total += int(labels.numel())
        if "auc" in self.metrics:
            for c in range(1 if k == 2 else 0, k):  # binary: score of class 1 only
                self.aucs.setdefault(c, ExactAUC()).update(probs[:, c], labels == c)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if "accuracy" in self.metrics:
            out["accuracy"] = self.correct / self.total if self.total else math.nan
        if "auc" in self.metrics:
            vals = [v for v in (a.compute() for a in self.aucs.values()) if not math.isnan(v)]
            out["auc"] = float(sum(vals) / len(vals)) if vals else math.nan
        return out
