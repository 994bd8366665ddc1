"""Metric accumulators: exact AUC with ties, masked Dice/IoU, classification accuracy — against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from monai.metrics import compute_roc_auc

from monai_gmr.evaluation.metrics import ClassificationAccumulator, ExactAUC, SegmentationAccumulator, roc_auc_exact


def test_auc_hand_computed_with_ties():
    # positives 0.4, 0.8 vs negatives 0.1, 0.4: pairs (0.4>0.1)=1, (0.4==0.4)=0.5, (0.8>both)=2 -> 3.5 / 4
    s = torch.tensor([0.1, 0.4, 0.4, 0.8])
    y = torch.tensor([0, 0, 1, 1])
    assert roc_auc_exact(s, y) == pytest.approx(0.875, abs=0)
    # all tied -> 0.5
    assert roc_auc_exact(torch.full((6,), 0.3), torch.tensor([0, 1, 0, 1, 1, 0])) == 0.5
    # one class only -> NaN
    assert math.isnan(roc_auc_exact(torch.rand(5), torch.zeros(5)))


def test_auc_matches_monai_and_streams_exactly():
    s = torch.randint(0, 20, (600,)).double() / 20  # many ties
    y = (torch.rand(600) < 0.3).long()
    ref = compute_roc_auc(s, y)
    assert roc_auc_exact(s, y) == pytest.approx(ref, abs=1e-12)
    acc = ExactAUC()
    for chunk in torch.arange(600).split(77):
        acc.update(s[chunk], y[chunk])
    assert acc.compute() == pytest.approx(ref, abs=1e-12)
    assert acc.counts == (int(y.sum()), 600 - int(y.sum()))


def test_masked_dice_iou_auc_hand_computed():
    # 1 x 4 x 4 image, binary single-channel logits
    lab = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]).reshape(1, 1, 4, 4)
    pred = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]).reshape(1, 1, 4, 4)
    logits = (pred.float() * 2 - 1) * 3.0  # sigmoid > 0.5 exactly where pred == 1
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[3, 3] = False  # the missed foreground pixel is outside the valid region
    acc = SegmentationAccumulator(("dice", "iou", "auc"))
    acc.update(logits, lab, mask)
    r = acc.compute()
    # valid pixels: label fg {00, 01, 10, 11}, pred fg {00, 10, 11, 12} -> TP {00, 10, 11}, FP {12}, FN {01}
    tp, fp, fn = 3, 1, 1
    assert r["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert r["iou"] == pytest.approx(tp / (tp + fp + fn))
    # AUC on the 15 valid pixels: scores take 2 values; pos: 3 high 1 low; neg: 1 high 10 low
    # U = 3 * (10 + 0.5 * 1) + 1 * (0.5 * 10) = 36.5 ; P * N = 4 * 11
    assert r["auc"] == pytest.approx(36.5 / 44)
    # without the mask the pixel (3, 3) counts as a false negative
    acc2 = SegmentationAccumulator(("dice",))
    acc2.update(logits, lab, None)
    assert acc2.compute()["dice"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))


def test_two_channel_softmax_equals_single_channel_sigmoid():
    lab = (torch.rand(2, 1, 8, 8) > 0.5).long()
    z = torch.randn(2, 1, 8, 8)
    a = SegmentationAccumulator()
    a.update(z, lab)
    b = SegmentationAccumulator()
    b.update(torch.cat([torch.zeros_like(z), z], 1), lab)  # softmax([0, z])[1] == sigmoid(z)
    ra, rb = a.compute(), b.compute()
    assert ra["dice"] == pytest.approx(rb["dice"]) and ra["iou"] == pytest.approx(rb["iou"])
    assert ra["auc"] == pytest.approx(rb["auc"], abs=1e-6)


def test_segmentation_label_out_of_range():
    acc = SegmentationAccumulator()
    with pytest.raises(ValueError, match="label"):
        acc.update(torch.randn(1, 2, 4, 4), torch.full((1, 1, 4, 4), 5))


def test_classification_accumulator_hand_computed():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 0, 1])
    acc = ClassificationAccumulator()
    acc.update(logits[:2], y[:2])
    acc.update(logits[2:], y[2:])
    r = acc.compute()
    assert r["accuracy"] == 0.5
    # scores p1 = softmax[:, 1]: [s(-2), s(1), s(3), s(-1)]; pos {s(1), s(-1)} vs neg {s(-2), s(3)}: 1 + 1 = 2 of 4
    assert r["auc"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="label"):
        acc.update(logits, torch.tensor([0, 1]))
