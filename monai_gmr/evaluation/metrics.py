"""Metric accumulators for rotation robustness: masked Dice/IoU (MONAI), exact streaming ROC-AUC, accuracy, and
nuclei instance metrics (AJI, PQ).

Masking convention (segmentation): the one-hot prediction and the one-hot label are both multiplied by the
validity mask before MONAI's ``compute_dice`` / ``compute_iou`` (what ``DiceMetric`` / ``MeanIoU`` compute) see
them, so a masked-out pixel belongs to no class and counts as neither true positive, false positive nor false
negative: the metric is computed on the valid pixels only. ``ignore_empty=True`` (MONAI default): an image whose
label has no pixel of a class inside the mask gives NaN for that class and is left out of the mean.

ROC-AUC is computed exactly (not from a threshold histogram, which is only approximate): the accumulator keeps
every positive and negative score (4 bytes per pixel per class per view) and at the end counts, for every
positive, the negatives with a lower score plus half of those with an equal score (Mann-Whitney U, ties = 1/2),
which equals the trapezoidal ROC-AUC of ``sklearn.metrics.roc_auc_score`` and MONAI's ``ROCAUCMetric``. This is
hand-written because MONAI's ``compute_roc_auc`` runs a Python loop over all samples (minutes for millions of
pixels) and needs all scores in one tensor. A macro AUC is the mean over the classes whose AUC is defined (MONAI's
is NaN when one class has no positive sample); :class:`DefinedClassesROCAUCMetric` is that macro AUC behind MONAI's
``ROCAUCMetric`` interface, for the classification bundle's validation key metric.

Instance metrics (optional, ``"aji"``, ``"pq"``): predicted instances come from the class map by the nuclei
bundle's own post-processing (``monai_gmr.workflows.instance_from_semantic``: by default connected components of
the nuclei with full connectivity, or the inference settings given as ``instance_kwargs``; with 3 classes the
boundary pixels join the nearest interior component, the larger one when equidistant), ground-truth instances are the instance-id label rotated with ``nearest``; both are
cut to the validity mask. PQ is MONAI's ``compute_panoptic_quality`` (IoU > 0.5 matching). AJI (Kumar et al., IEEE
TMI 2017) has no MONAI implementation; it is written here following the widely used "fast AJI" of HoVer-Net
(Graham et al. 2019, ``get_fast_aji``): each ground-truth nucleus is paired with the predicted one of highest IoU
(a prediction may be paired with several: Kumar's AJI, not AJI+), unpaired nuclei of either side add their area to
the union. Both are computed per image and averaged over images
(an image with neither true nor predicted nuclei inside the mask is left out).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.metrics import ROCAUCMetric, compute_dice, compute_iou, do_metric_reduction

__all__ = [
    "CLS_METRICS",
    "SEG_METRICS",
    "INSTANCE_METRICS",
    "ExactAUC",
    "ClassificationAccumulator",
    "DefinedClassesROCAUCMetric",
    "SegmentationAccumulator",
    "aggregated_jaccard_index",
    "instance_metrics",
    "roc_auc_exact",
    "to_probabilities",
]

SEG_METRICS = ("dice", "iou", "auc")
INSTANCE_METRICS = ("aji", "pq")
CLS_METRICS = ("accuracy", "auc")
ACTIVATIONS = ("auto", "softmax", "sigmoid", None)

logger = logging.getLogger(__name__)


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

    :meth:`update` raises ``ValueError`` for NaN scores (e.g. a diverged network's outputs), as scikit-learn does.

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
        n_nan = int(torch.isnan(scores).sum())
        if n_nan:  # a NaN sorts above every number: it would count as a perfect positive score
            raise ValueError(f"scores contain NaN ({n_nan} of {scores.numel()}); the ROC-AUC is undefined.")
        if self.storage_device is not None:
            scores, labels = scores.to(self.storage_device), labels.to(self.storage_device)
        self._pos.append(scores[labels])
        self._neg.append(scores[~labels])

    def state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scores seen so far, ``(positive scores (P,), negative scores (Q,))`` as CPU tensors (picklable, for
        :meth:`merge_states` in another process)."""
        pos = torch.cat(self._pos).cpu() if self._pos else torch.zeros(0)
        neg = torch.cat(self._neg).cpu() if self._neg else torch.zeros(0)
        return pos, neg

    def merge_states(self, states: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Replace the scores held by the union of ``states`` (:meth:`state` of several accumulators, e.g. one per
        process, this one's included). The AUC counts pairs, so the order of the states does not change it."""
        self.reset()
        for pos, neg in states:
            if self.storage_device is not None:
                pos, neg = pos.to(self.storage_device), neg.to(self.storage_device)
            self._pos.append(pos)
            self._neg.append(neg)

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


def aggregated_jaccard_index(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Aggregated Jaccard Index of two instance-id maps of the same shape (0 = background).

    Every ground-truth instance is paired with the predicted instance of highest IoU (when it overlaps one; on equal
    IoU the smaller predicted id); the paired intersections over the paired unions plus the areas of all unpaired
    instances of both maps. This is Kumar et al.'s original AJI (HoVer-Net's ``get_fast_aji``): one prediction may
    be paired with several ground-truth nuclei (a merge counts its area in each of their unions), unlike AJI+
    (Graham et al. 2019), which pairs one to one. NaN when both maps are empty.

    Args:
        pred: predicted instance ids, any shape (e.g. ``(H, W)``), whole non-negative numbers (integer or float).
        gt: ground-truth instance ids of the same shape.

    Raises:
        ValueError: the shapes differ, or a map holds NaN, negative or non-whole ids (the message names the map).
    """
    _check_instance_pair(pred, gt)
    p = torch.unique(pred.reshape(-1).long(), return_inverse=True)[1]  # contiguous ids, 0 stays 0 when present
    g = torch.unique(gt.reshape(-1).long(), return_inverse=True)[1]
    if not bool((pred == 0).any()):
        p = p + 1
    if not bool((gt == 0).any()):
        g = g + 1
    n_p, n_g = int(p.max()) + 1, int(g.max()) + 1
    if n_p == 1 and n_g == 1:
        return math.nan
    if n_p == 1 or n_g == 1:  # one side has no instance: nothing intersects
        return 0.0
    inter = torch.bincount(g * n_p + p, minlength=n_g * n_p).reshape(n_g, n_p)[1:, 1:].double()
    area_g = torch.bincount(g, minlength=n_g)[1:].double()
    area_p = torch.bincount(p, minlength=n_p)[1:].double()
    union = area_g[:, None] + area_p[None, :] - inter
    iou = inter / union
    best_iou, best = iou.max(dim=1)
    paired = best_iou > 0
    rows = torch.nonzero(paired).reshape(-1)
    cols = best[paired]
    total_inter = inter[rows, cols].sum()
    total_union = union[rows, cols].sum() + area_g[~paired].sum()
    used = torch.zeros(n_p - 1, dtype=torch.bool, device=cols.device)  # indexed by cols: the maps' device
    used[cols] = True
    total_union = total_union + area_p[~used].sum()
    return float(total_inter / total_union)


def instance_metrics(pred: torch.Tensor, gt: torch.Tensor, metrics: tuple[str, ...] = INSTANCE_METRICS) -> dict[str, float]:
    """AJI and/or PQ of two instance-id maps ``(*spatial)`` (0 = background; NaN when both are empty).

    PQ is MONAI's ``compute_panoptic_quality``: pairs with IoU strictly above 0.5, ``PQ = SQ * RQ`` (0 when nothing
    is paired). AJI: :func:`aggregated_jaccard_index`.

    Raises:
        ValueError: the shapes differ, or a map holds NaN, negative or non-whole ids (the message names the map).
    """
    from monai.metrics.panoptic_quality import compute_panoptic_quality

    _check_instance_pair(pred, gt)
    out: dict[str, float] = {}
    empty = not bool((pred > 0).any()) and not bool((gt > 0).any())
    if "aji" in metrics:
        out["aji"] = math.nan if empty else aggregated_jaccard_index(pred, gt)
    if "pq" in metrics:
        out["pq"] = math.nan if empty else float(compute_panoptic_quality(pred.long(), gt.long(), metric_name="pq"))
    return out


def _check_instance_pair(pred: torch.Tensor, gt: torch.Tensor) -> None:
    """Two instance-id maps of one shape, each of whole non-negative ids (see :func:`_require_instance_ids`)."""
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}.")
    _require_instance_ids(pred, "pred")
    _require_instance_ids(gt, "gt")


def _require_instance_ids(ids: torch.Tensor, name: str) -> None:
    """Refuse instance maps that are not whole non-negative ids: ``.long()`` truncated 1.5 to 1 and turned NaN into
    a huge negative id, and a negative id was relabelled as background or counted as a nucleus depending on the
    metric (AJI 0 but PQ 1 for the same map), all without a word."""
    if ids.is_floating_point():
        n_bad = int((~torch.isfinite(ids)).sum())
        if n_bad:
            raise ValueError(f"{name} instance ids contain NaN or infinite values ({n_bad} of {ids.numel()} pixels).")
        if not bool((ids == torch.round(ids)).all()):
            bad = ids[ids != torch.round(ids)].reshape(-1)[:3].tolist()
            raise ValueError(
                f"{name} instance ids must be whole numbers, got values such as {bad} (an id map resampled with a "
                "non-nearest mode?)."
            )
    if ids.numel() and bool((ids < 0).any()):
        raise ValueError(f"{name} instance ids must be >= 0 (0 = background), got minimum {ids.min().item()}.")


def to_probabilities(y: torch.Tensor, activation: str | None = "auto") -> torch.Tensor:
    """Network outputs ``(N, C, ...)`` -> probabilities: ``"auto"`` = softmax over C when C > 1 else sigmoid;
    ``None`` = outputs already are probabilities. ``"softmax"`` on a single channel raises ``ValueError`` (it is 1
    everywhere). Probabilities are float32, float64 for float64 outputs (rounded to float32, distinct probabilities
    close to 0 or 1 became ties, which changed the ROC-AUC)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got activation={activation!r}.")
    if activation == "softmax" and y.shape[1] == 1:  # a constant 1: every prediction would be class 1
        raise ValueError(
            "activation='softmax' got outputs with a single channel (softmax over one channel is 1 everywhere); use "
            "activation='sigmoid' or 'auto' for single-logit networks."
        )
    y = y if y.dtype == torch.float64 else y.float()
    if activation is None:
        return y
    if activation == "auto":
        activation = "softmax" if y.shape[1] > 1 else "sigmoid"
    return torch.softmax(y, dim=1) if activation == "softmax" else torch.sigmoid(y)


def _class_probs(p: torch.Tensor) -> torch.Tensor:
    """``(N, C, ...)`` probabilities -> ``(N, K, ...)`` with ``K = max(C, 2)`` (binary single-channel expanded)."""
    return torch.cat([1.0 - p, p], dim=1) if p.shape[1] == 1 else p


class SegmentationAccumulator:
    """Masked Dice / IoU / pixel ROC-AUC for one view.

    Args:
        metrics: subset of ``("dice", "iou", "auc", "aji", "pq")``; the instance metrics need ``instances`` in
            :meth:`update`.
        include_background: include class 0 in Dice/IoU/AUC (for binary tasks ``False`` means foreground only).
        activation: see :func:`to_probabilities`.
        auc_storage: device where AUC scores are accumulated.
        merge_foreground: outputs with more than 2 classes are nuclei classes (e.g. interior and boundary): Dice,
            IoU and AUC score their sum as one nucleus class (:func:`monai_gmr.workflows.nuclei.merge_foreground`)
            while the instances come from the full class map (:func:`monai_gmr.workflows.nuclei.nucleus_class_map`,
            boundary class 2 with 3 classes), as the nuclei bundle's inference writes them.
        instance_kwargs: arguments of :func:`monai_gmr.workflows.instance_from_semantic` for the predicted
            instances (``method``, ``min_size``, ``connectivity``; default: connected components with full
            connectivity and no size filter); pass the inference settings to score what inference writes.
    """

    def __init__(
        self,
        metrics: tuple[str, ...] = SEG_METRICS,
        include_background: bool = False,
        activation: str | None = "auto",
        auc_storage: torch.device | str | None = None,
        merge_foreground: bool = False,
        instance_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.metrics = tuple(metrics)
        self.merge_foreground = merge_foreground
        self.instance_kwargs = dict(instance_kwargs or {})
        self.include_background = include_background
        self.activation = activation
        self.auc_storage = auc_storage
        # per-image rows from MONAI's compute_dice / compute_iou (what DiceMetric / MeanIoU compute), kept here and
        # reduced as their "mean" (see _mean_rows): MONAI's metric buffers all-gather across processes inside
        # aggregate(), while state()/merge_states() merge the rows of a distributed evaluation explicitly
        self.rows: dict[str, list[torch.Tensor]] = {m: [] for m in ("dice", "iou") if m in self.metrics}
        self.aucs: dict[int, ExactAUC] = {}
        self.num_classes: int | None = None
        self.instance: dict[str, list[float]] = {m: [] for m in INSTANCE_METRICS if m in self.metrics}

    def update(
        self, y_pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, instances: torch.Tensor | None = None
    ) -> None:
        """Args:
        y_pred: network outputs ``(N, C, *spatial)`` (logits unless ``activation=None``).
        y: integer class labels ``(N, 1, *spatial)``.
        mask: bool ``(*spatial)`` or ``(N, 1, *spatial)`` of pixels to score (None = all).
        instances: ground-truth instance ids ``(N, 1, *spatial)`` (required for ``"aji"`` / ``"pq"``).
        """
        probs = _class_probs(to_probabilities(y_pred, self.activation))
        _require_no_nan(probs)
        class_map, boundary = None, None
        if self.merge_foreground and probs.shape[1] > 2:
            from monai_gmr.workflows.nuclei import merge_foreground, nucleus_class_map  # lazy, as below

            class_map = torch.stack([nucleus_class_map(p) for p in probs]).long()
            boundary = 2 if probs.shape[1] == 3 else None
            probs = torch.stack([merge_foreground(p) for p in probs])
        k = probs.shape[1]
        if self.num_classes is None:
            self.num_classes = k
        labels = y.long()
        _require_whole(y, labels)
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
            for name, compute in (("dice", compute_dice), ("iou", compute_iou)):
                if name in self.rows:  # (N, K or K - 1) per image and class, NaN where the label has no such pixel
                    row = compute(y_pred=pred_oh, y=lab_oh, include_background=self.include_background, ignore_empty=True)
                    self.rows[name].append(row.detach())
        if "auc" in self.metrics:
            sel = None if m is None else m[:, 0]
            for c in range(0 if self.include_background else 1, k):
                sc, lc = probs[:, c], labels[:, 0] == c
                if sel is not None:
                    sc, lc = sc[sel], lc[sel]
                self.aucs.setdefault(c, ExactAUC(self.auc_storage)).update(sc, lc)
        if self.instance:
            if instances is None:
                raise ValueError(f"metrics {tuple(self.instance)} need the ground-truth instance map (instances=None).")
            if instances.shape != labels.shape:
                raise ValueError(
                    f"instances must have the label's shape {tuple(labels.shape)}, got {tuple(instances.shape)}."
                )
            # predicted instances: the bundle's own post-processing (instance_from_semantic; with 3 classes, boundary
            # pixels join the nearest interior component)
            from monai_gmr.workflows.common import instance_from_semantic  # lazy: workflows build on evaluation

            if class_map is None:
                sem, boundary = pred_idx, (2 if k == 3 else None)
            else:
                sem = class_map.to(pred_idx.device)
            _require_instance_ids(instances, "instances")
            inst = instances.long()
            if m is not None:
                sem, inst = torch.where(m, sem, 0), torch.where(m, inst, 0)
            kw = {"connectivity": sem.ndim - 2, **self.instance_kwargs}
            names = tuple(self.instance)
            for i in range(sem.shape[0]):
                pred_inst = instance_from_semantic(sem[i, 0], boundary_class=boundary, **kw)
                vals = instance_metrics(torch.from_numpy(pred_inst).long(), inst[i, 0].cpu(), names)
                for name, v in vals.items():
                    if not math.isnan(v):
                        self.instance[name].append(v)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, vals in self.instance.items():
            out[name] = float(sum(vals) / len(vals)) if vals else math.nan
        for name, rows in self.rows.items():
            out[name] = _mean_rows(rows)
        if "auc" in self.metrics:
            vals = [a.compute() for a in self.aucs.values()]
            vals = [v for v in vals if not math.isnan(v)]
            out["auc"] = float(sum(vals) / len(vals)) if vals else math.nan
        return out

    def state(self) -> dict[str, Any]:
        """Everything accumulated so far as CPU tensors and lists (picklable): ``{"num_classes": K or None, "rows":
        {"dice"/"iou": (N, C') per-image values}, "aucs": {class: ExactAUC.state()}, "instance": {"aji"/"pq": [per
        image]}}``, for :meth:`merge_states` (e.g. in another process)."""
        return {
            "num_classes": self.num_classes,
            "rows": {m: [torch.cat(r).cpu()] if r else [] for m, r in self.rows.items()},
            "aucs": {c: a.state() for c, a in self.aucs.items()},
            "instance": {m: list(v) for m, v in self.instance.items()},
        }

    def merge_states(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Replace what this accumulator holds by the union of ``states`` (:meth:`state` of accumulators of the same
        settings, e.g. one per process in rank order, this one's included): :meth:`compute` then gives the metrics
        of all their images (the image means up to the float summation order)."""
        ks = [st["num_classes"] for st in states if st["num_classes"] is not None]
        if len(set(ks)) > 1:
            raise ValueError(f"cannot merge segmentation accumulators of different numbers of classes {sorted(set(ks))}.")
        self.num_classes = ks[0] if ks else None
        self.rows = {m: [r for st in states for r in st["rows"].get(m, [])] for m in self.rows}
        self.instance = {m: [v for st in states for v in st["instance"].get(m, [])] for m in self.instance}
        classes = sorted({c for st in states for c in st["aucs"]})
        self.aucs = {}
        for c in classes:
            self.aucs[c] = ExactAUC(self.auc_storage)
            self.aucs[c].merge_states([st["aucs"][c] for st in states if c in st["aucs"]])


def _require_no_nan(probs: torch.Tensor) -> None:
    """Refuse NaN outputs for every metric, as :class:`ExactAUC` does: argmax took a NaN pixel/sample for class 0, so a
    partly diverged network's NaNs were scored as confident background predictions (Dice, IoU, accuracy)."""
    n_nan = int(torch.isnan(probs).sum())
    if n_nan:
        raise ValueError(
            f"network outputs contain NaN ({n_nan} of {probs.numel()} class probabilities); the metrics are undefined "
            "(argmax would read them as class 0)."
        )


def _require_whole(y: torch.Tensor, labels: torch.Tensor) -> None:
    """Refuse float class labels that are not whole numbers (``labels = y.long()``): truncation turned a resampled
    label's 0.5 or a soft target's 0.7 into class 0 and scored the wrong pixels/samples without a word."""
    if y.is_floating_point() and not bool((labels.to(y.dtype) == y).all()):
        bad = y[labels.to(y.dtype) != y].reshape(-1)[:3].tolist()
        raise ValueError(
            f"label values must be whole class indices, got non-integer values such as {bad} (a label resampled "
            "with a non-nearest mode, or soft/probability targets); round or threshold the labels (label_transform) "
            "first."
        )


def _mean_rows(rows: Sequence[torch.Tensor]) -> float:
    """Mean of per-image Dice/IoU rows ``(N, C)`` over the values that are not NaN (MONAI's ``"mean"`` reduction,
    what ``DiceMetric.aggregate()`` gives); NaN when no (image, class) pair was scorable (MONAI returns 0 then, which
    would read as a total failure)."""
    if not rows:  # nothing accumulated
        return math.nan
    v, not_nans = do_metric_reduction(torch.cat([r.to(rows[0].device) for r in rows]), "mean")
    return math.nan if float(not_nans.sum()) == 0 else float(v)


class ClassificationAccumulator:
    """Accuracy and (macro one-vs-rest) ROC-AUC for one view.

    The macro AUC is the mean over the classes whose AUC is defined: a class with no positive or no negative sample
    in the view is left out (MONAI's ``ROCAUCMetric`` returns NaN then); NaN only when no class has one.

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
        if y_pred.ndim != 2:  # a segmentation network's (N, C, H, W) maps: the comparison below failed to broadcast
            raise ValueError(
                f"classification outputs must be (N, C) scores, got shape {tuple(y_pred.shape)}; for per-pixel outputs "
                "use task='segmentation' (a head returning (N, C, 1, 1): flatten it to (N, C))."
            )
        probs = _class_probs(to_probabilities(y_pred, self.activation))
        _require_no_nan(probs)
        k = probs.shape[1]
        one_hot = y.ndim == 2 and y.shape[1] == k and k > 1 and y_pred.shape[1] > 1
        labels = y.argmax(dim=1) if one_hot else y.reshape(-1)
        labels = labels.long()
        if not one_hot:
            _require_whole(y.reshape(-1), labels)
        if labels.numel() != probs.shape[0]:
            raise ValueError(f"label must hold one class per sample ({probs.shape[0]}), got shape {tuple(y.shape)}.")
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"label values must be in [0, {k - 1}], got range [{int(labels.min())}, {int(labels.max())}].")
        self.correct += int((probs.argmax(dim=1) == labels).sum())
        self.total += int(labels.numel())
        if "auc" in self.metrics:
            for c in range(1 if k == 2 else 0, k):  # binary: score of class 1 only
                self.aucs.setdefault(c, ExactAUC()).update(probs[:, c], labels == c)

    def state(self) -> dict[str, Any]:
        """Everything accumulated so far, picklable (CPU tensors, ints): ``{"correct", "total", "aucs": {class:
        ExactAUC.state()}}``, for :meth:`merge_states` (e.g. in another process)."""
        return {"correct": self.correct, "total": self.total, "aucs": {c: a.state() for c, a in self.aucs.items()}}

    def merge_states(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Replace what this accumulator holds by the union of ``states`` (:meth:`state` of accumulators of the same
        settings, e.g. one per process, this one's included)."""
        self.correct = sum(int(st["correct"]) for st in states)
        self.total = sum(int(st["total"]) for st in states)
        self.aucs = {}
        for c in sorted({c for st in states for c in st["aucs"]}):
            self.aucs[c] = ExactAUC()
            self.aucs[c].merge_states([st["aucs"][c] for st in states if c in st["aucs"]])

    def class_aucs(self) -> dict[int, float]:
        """One-vs-rest ROC-AUC of each scored class (binary: class 1 only), NaN for a class without a positive or
        without a negative sample; the macro AUC of :meth:`compute` is the mean of the values that are not NaN."""
        return {c: a.compute() for c, a in sorted(self.aucs.items())}

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if "accuracy" in self.metrics:
            out["accuracy"] = self.correct / self.total if self.total else math.nan
        if "auc" in self.metrics:
            vals = [v for v in self.class_aucs().values() if not math.isnan(v)]
            out["auc"] = float(sum(vals) / len(vals)) if vals else math.nan
        return out


class DefinedClassesROCAUCMetric(ROCAUCMetric):
    """MONAI's ``ROCAUCMetric`` whose macro average leaves out the classes whose ROC-AUC is undefined.

    MONAI's macro ROC-AUC is NaN as soon as one class has no positive (or no negative) sample among the evaluated
    ones, e.g. a validation split without a patch of class 2 when ``num_classes=3``; a NaN key metric never
    compares as better, so the best checkpoint would stay the first epoch's. This metric takes the same inputs
    (``y_pred`` ``(N, C)`` probabilities, ``y`` ``(N, C)`` one-hot or ``(N,)`` class indices; batch-first tensors
    or lists of channel-first ones, gathered across processes by MONAI's ``Cumulative``) and computes the macro
    one-vs-rest AUC of :class:`ClassificationAccumulator` (binary: the AUC of class 1): the mean over the classes
    whose AUC is defined. Each set of left-out classes is logged once as a warning naming the classes. The result
    is NaN only when no class has a defined AUC (every sample of one class).

    Args:
        name: what the metric is called in the warning (set to the metric's name by :class:`DefinedClassesROCAUC`).
    """

    def __init__(self, name: str = "ROC-AUC") -> None:
        super().__init__(average="macro")
        self.name = name
        self._warned: set[tuple[int, ...]] = set()

    def aggregate(self, average: Any = None) -> float:  # type: ignore[override]
        """The macro ROC-AUC over the classes whose AUC is defined (``average`` other than macro: MONAI's)."""
        if average is not None and str(getattr(average, "value", average)) != "macro":
            return super().aggregate(average)
        y_pred, y = self.get_buffer()
        if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise ValueError("y_pred and y must be PyTorch Tensor.")
        acc = ClassificationAccumulator(("auc",), activation=None)
        acc.update(y_pred, y)
        per_class = acc.class_aucs()
        undefined = tuple(c for c, v in per_class.items() if math.isnan(v))
        if undefined and undefined not in self._warned and _main_process():
            self._warned.add(undefined)
            defined = [c for c in per_class if c not in undefined]
            why = [
                f"class {c}: {'no sample' if acc.aucs[c].counts[0] == 0 else 'every sample'}" for c in undefined
            ]
            logger.warning(
                "%s: the one-vs-rest ROC-AUC of class(es) %s is undefined on these %d samples (%s); the macro "
                "average is over class(es) %s%s",
                self.name, list(undefined), acc.total, "; ".join(why),
                defined, "" if defined else " (none: the value is NaN)",
            )  # fmt: skip
        return acc.compute()["auc"]


def _main_process() -> bool:
    """Rank 0, or not distributed (the gathered metric is the same on every rank: warn once)."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0
