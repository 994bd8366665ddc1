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


def test_auc_refuses_nan_scores():
    """A NaN score sorted above every number: a NaN positive counted as beating all negatives, so a network with NaN
    outputs got AUC 1.0 (0.5 for tied all-NaN scores) instead of an error, as sklearn's roc_auc_score raises."""
    s = torch.tensor([0.1, float("nan"), 0.9, 0.3])
    y = torch.tensor([0, 1, 1, 0])
    with pytest.raises(ValueError, match="scores.*NaN"):
        roc_auc_exact(s, y)
    acc = SegmentationAccumulator(("auc",))
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        acc.update(logits, torch.tensor([[[[1, 0], [1, 0]]]]))


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


def test_masked_out_pixels_are_not_background_with_include_background():
    """A masked-out pixel belongs to no class: with ``include_background=True`` it must not count as a true negative
    of the background class (mutation audit: scoring masked pixels as class 0 survived the test above, which leaves
    the background out)."""
    lab = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]).reshape(1, 1, 4, 4)
    pred = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]).reshape(1, 1, 4, 4)
    logits = (pred.float() * 2 - 1) * 3.0
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[3, 3] = False  # label 1, prediction 0: outside the region, neither a background hit nor a miss
    mask[2, 2] = False  # label 0, prediction 0: were it scored as background it would add a background hit
    acc = SegmentationAccumulator(("dice", "iou"), include_background=True)
    acc.update(logits, lab, mask)
    r = acc.compute()
    # 14 valid pixels; class 1: TP 3, FP 1 ({12}), FN 1 ({01}); class 0: TP 14 - 5 = 9, FP 1 ({01}), FN 1 ({12})
    dice = (2 * 9 / (2 * 9 + 2) + 2 * 3 / (2 * 3 + 2)) / 2
    iou = (9 / (9 + 2) + 3 / (3 + 2)) / 2
    assert r["dice"] == pytest.approx(dice)
    assert r["iou"] == pytest.approx(iou)


def test_dice_iou_nan_when_no_image_has_foreground_in_the_region():
    """ignore_empty: images without foreground in the scored region are left out; when none is left the score is
    NaN (like AUC), not MONAI's 0, which would report a perfect model as a total failure."""
    bg = torch.zeros(2, 1, 8, 8)
    bg[:, 0] = -5.0  # predicts background everywhere
    empty = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    acc = SegmentationAccumulator(("dice", "iou", "auc"))
    acc.update(bg, empty)
    r = acc.compute()
    assert math.isnan(r["dice"]) and math.isnan(r["iou"]) and math.isnan(r["auc"])
    # foreground only outside the mask: still nothing to score
    corner = empty[:1].clone()
    corner[..., 0, 0] = 1
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[0, 0] = False
    acc = SegmentationAccumulator(("dice",))
    acc.update(bg[:1], corner, mask)
    assert math.isnan(acc.compute()["dice"])
    # one empty image and one perfect image: the mean is over the scorable one
    hit = bg[:1].clone()
    hit[0, 0, 2:4, 2:4] = 5.0
    lab = empty[:1].clone()
    lab[0, 0, 2:4, 2:4] = 1
    acc = SegmentationAccumulator(("dice", "iou"))
    acc.update(hit, lab)
    acc.update(bg[:1], empty[:1])
    assert acc.compute() == {"dice": 1.0, "iou": 1.0}


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


def test_softmax_of_a_single_channel_is_refused():
    """activation='softmax' on single-channel outputs is 1 everywhere: every pixel/sample was predicted foreground
    (Dice of an all-foreground map, AUC 0.5) without a word; RotationTTAInferer already refuses it."""
    from monai_gmr.evaluation.metrics import to_probabilities

    with pytest.raises(ValueError, match="activation='softmax'.*sigmoid"):
        to_probabilities(torch.randn(2, 1, 4, 4), "softmax")
    with pytest.raises(ValueError, match="activation"):
        SegmentationAccumulator(activation="softmax").update(torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="activation"):
        ClassificationAccumulator(activation="softmax").update(torch.randn(3, 1), torch.tensor([0, 1, 0]))
    assert to_probabilities(torch.zeros(2, 1), "sigmoid").eq(0.5).all()


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


def test_classification_macro_auc_leaves_out_classes_without_positives():
    """3 classes, class 2 never the label: the macro AUC is the mean of classes 0 and 1 (documented; MONAI's
    ROCAUCMetric gives NaN), and NaN when no class has both positives and negatives."""
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.4, 0.5, 0.1], [0.3, 0.3, 0.4]])
    y = torch.tensor([0, 1, 0, 1])
    acc = ClassificationAccumulator(activation=None)
    acc.update(probs, y)
    expected = (roc_auc_exact(probs[:, 0], y == 0) + roc_auc_exact(probs[:, 1], y == 1)) / 2
    assert expected == pytest.approx(0.8125)  # class 0: 4 of 4 pairs; class 1: 2.5 of 4 (one tie)
    assert acc.compute()["auc"] == pytest.approx(expected)
    one = ClassificationAccumulator(activation=None)
    one.update(probs, torch.zeros(4, dtype=torch.long))
    assert math.isnan(one.compute()["auc"])


# ------------------------------------------------------------------------------------------------ instance metrics
def test_aji_and_pq_hand_computed():
    from monai_gmr.evaluation.metrics import aggregated_jaccard_index, instance_metrics

    gt = torch.zeros(12, 12, dtype=torch.long)
    gt[1:5, 1:5] = 7  # 16 px, arbitrary id
    pred = torch.zeros_like(gt)
    pred[1:5, 1:6] = 3  # 20 px covering the nucleus: IoU 16 / 20
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(16 / 20)
    pred[8:10, 8:10] = 9  # an unpaired false positive of 4 px adds its area to the union
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(16 / 24)
    # PQ = SQ * RQ: one match (IoU 0.8), one FP, no FN -> 0.8 * 1 / (1 + 0.5)
    assert instance_metrics(pred, gt)["pq"] == pytest.approx(0.8 / 1.5, abs=1e-5)

    # two true nuclei merged into one prediction: both pair with it, the predicted area counts twice
    gt2 = torch.zeros(6, 12, dtype=torch.long)
    gt2[1:3, 0:5], gt2[1:3, 7:12] = 1, 2  # 10 px each
    pred2 = torch.zeros_like(gt2)
    pred2[1:3, 0:12] = 1  # 24 px
    assert aggregated_jaccard_index(pred2, gt2) == pytest.approx(20 / 48)
    assert aggregated_jaccard_index(gt2, gt2) == 1.0 and instance_metrics(gt2, gt2)["pq"] == pytest.approx(1.0)
    assert aggregated_jaccard_index(torch.zeros_like(gt2), gt2) == 0.0  # nothing predicted
    assert math.isnan(instance_metrics(torch.zeros_like(gt2), torch.zeros_like(gt2))["aji"])
    with pytest.raises(ValueError, match="shape"):
        aggregated_jaccard_index(pred, gt2)


def test_predicted_instances_use_full_connectivity_by_default():
    """Documented default: the predicted nuclei are connected components with full connectivity (8 in 2D), unless
    ``instance_kwargs`` say otherwise (mutation audit: 4-connectivity survived every other test)."""
    inst = torch.zeros(1, 1, 10, 10, dtype=torch.long)
    inst[0, 0, 1:4, 1:4] = 3
    inst[0, 0, 4:7, 4:7] = 3  # one nucleus whose two halves touch at a corner only
    fg = (inst > 0).long()
    logits = torch.cat([1.0 - fg, fg.float()], 1) * 5
    acc = SegmentationAccumulator(("aji", "pq"))
    acc.update(logits, fg, instances=inst)
    assert acc.compute() == pytest.approx({"aji": 1.0, "pq": 1.0})
    acc = SegmentationAccumulator(("aji",), instance_kwargs={"connectivity": 1})  # 4-connectivity: two halves
    acc.update(logits, fg, instances=inst)
    # the nucleus (18 px) pairs with one half (9 px): 9 / (18 + the other, unpaired half's 9)
    assert acc.compute()["aji"] == pytest.approx(9 / 27)


def test_accumulator_skips_images_without_instances_in_aji_and_pq():
    """An image with no nucleus on either side has an undefined AJI / PQ (NaN): it is left out of the mean, not
    averaged in (mutation audit: appending the NaN made the whole run's AJI / PQ NaN, and no test noticed)."""
    inst = torch.zeros(2, 1, 10, 10, dtype=torch.long)
    inst[0, 0, 1:4, 1:4], inst[0, 0, 6:9, 5:9] = 4, 5  # image 0: two nuclei, found exactly; image 1: empty
    fg = (inst > 0).long()
    logits = torch.cat([1.0 - fg, fg.float()], 1) * 5
    acc = SegmentationAccumulator(("aji", "pq"))
    acc.update(logits, fg, instances=inst)
    out = acc.compute()
    assert out["aji"] == 1.0 and out["pq"] == pytest.approx(1.0)
    # only empty images: nothing defined, NaN
    acc = SegmentationAccumulator(("aji", "pq"))
    acc.update(logits[1:], fg[1:], instances=inst[1:])
    assert all(math.isnan(v) for v in acc.compute().values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_aji_of_cuda_instance_maps():
    """aggregated_jaccard_index kept its 'used predictions' mask on the CPU and indexed it with CUDA indices
    ('indices should be either on cpu or on the same device'): CUDA maps crashed."""
    from monai_gmr.evaluation.metrics import aggregated_jaccard_index

    gt = torch.zeros(12, 12, dtype=torch.long)
    gt[1:5, 1:5] = 7
    pred = torch.zeros_like(gt)
    pred[1:5, 1:6] = 3
    pred[8:10, 8:10] = 9
    assert aggregated_jaccard_index(pred.cuda(), gt.cuda()) == pytest.approx(16 / 24)


def test_accumulator_instance_metrics_and_missing_instances():
    from monai_gmr.workflows.common import instance_from_semantic

    inst = torch.zeros(1, 1, 10, 10, dtype=torch.long)
    inst[0, 0, 1:4, 1:4], inst[0, 0, 6:9, 5:9] = 4, 5
    fg = (inst > 0).long()
    logits = torch.cat([1.0 - fg, fg.float()], 1) * 5
    acc = SegmentationAccumulator(("dice", "aji", "pq"))
    acc.update(logits, fg, instances=inst)
    out = acc.compute()
    assert out["aji"] == 1.0 and out["pq"] == pytest.approx(1.0) and out["dice"] == 1.0
    assert int(instance_from_semantic(fg[0, 0], connectivity=2).max()) == 2
    mask = torch.ones(10, 10, dtype=torch.bool)
    mask[:, 5:] = False  # hides the second nucleus on both sides
    acc = SegmentationAccumulator(("aji",))
    acc.update(logits, fg, mask, instances=inst)
    assert acc.compute()["aji"] == 1.0
    with pytest.raises(ValueError, match="instance"):
        SegmentationAccumulator(("aji",)).update(logits, fg)


def test_boundary_class_outputs_score_the_instances_inference_writes():
    """With interior + boundary classes, merge_foreground scores Dice on the merged nucleus class and builds the
    instances from the full class map (touching nuclei split by their boundary), as inference does; the merged
    2-class view of the same output merges the touching nuclei. instance_kwargs reaches instance_from_semantic."""
    gt = torch.zeros(1, 1, 12, 20, dtype=torch.long)
    gt[0, 0, 2:10, 2:10], gt[0, 0, 2:10, 10:18] = 1, 2  # two touching square nuclei
    gt[0, 0, 0, 0] = 3  # a one-pixel nucleus
    cls = (gt > 0).long()
    cls[0, 0, 2:10, 9:11] = 2  # the boundary between the two squares
    logits = 10.0 * torch.nn.functional.one_hot(cls[:, 0], 3).permute(0, 3, 1, 2).float()
    fg = (gt > 0).long()
    acc = SegmentationAccumulator(("dice", "aji", "pq"), merge_foreground=True)
    acc.update(logits, fg, instances=gt)
    r = acc.compute()
    assert r["dice"] == pytest.approx(1.0) and r["aji"] == pytest.approx(1.0) and r["pq"] == pytest.approx(1.0, abs=1e-5)
    merged = torch.cat([logits[:, :1], torch.logsumexp(logits[:, 1:], 1, keepdim=True)], 1)  # merged 2-class logits
    acc = SegmentationAccumulator(("dice", "aji"))
    acc.update(merged, fg, instances=gt)
    assert acc.compute()["aji"] < 0.6
    acc = SegmentationAccumulator(("aji",), merge_foreground=True, instance_kwargs={"min_size": 2})
    acc.update(logits, fg, instances=gt)  # the one-pixel nucleus is dropped: a missed nucleus
    assert acc.compute()["aji"] == pytest.approx(128 / 129)


def _onehot(labels, k):
    return torch.nn.functional.one_hot(torch.as_tensor(labels), k).float()


def test_defined_classes_roc_auc_equals_monai_when_every_class_is_present():
    """All classes scored: the same value as MONAI's macro ROCAUC (binary and multi-class, batches and lists)."""
    from monai.metrics import ROCAUCMetric

    from monai_gmr.evaluation import DefinedClassesROCAUCMetric

    g = torch.Generator().manual_seed(0)
    for k in (2, 3):
        probs = torch.softmax(torch.randn(40, k, generator=g), 1)
        labels = torch.arange(40) % k
        ours, ref = DefinedClassesROCAUCMetric(), ROCAUCMetric(average="macro")
        ours(list(probs[:25]), list(_onehot(labels[:25], k)))  # decollated, as the bundle's evaluator gives them
        ours(probs[25:], _onehot(labels[25:], k))
        ref(probs, _onehot(labels, k))
        assert ours.aggregate() == pytest.approx(float(ref.aggregate()), abs=1e-12)


def test_defined_classes_roc_auc_leaves_out_a_class_without_samples(caplog):
    """num_classes 3 on two-class labels: MONAI's macro AUC is NaN; ours is the mean of the defined classes, and a
    warning names the missing class (once)."""
    from monai.handlers import IgniteMetricHandler
    from monai.metrics import ROCAUCMetric

    from monai_gmr.evaluation import DefinedClassesROCAUC, DefinedClassesROCAUCMetric

    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(30, 3, generator=g), 1)
    labels = torch.arange(30) % 2  # classes 0 and 1 only
    ref = ROCAUCMetric(average="macro")
    ref(probs, _onehot(labels, 3))
    per_class = ROCAUCMetric(average="none")
    per_class(probs, _onehot(labels, 3))
    with pytest.warns(UserWarning, match="skip AUC computation"):  # MONAI, for class 2
        assert math.isnan(float(ref.aggregate()))  # the defect: one undefined class makes the whole metric NaN
        want = sum(per_class.aggregate()[:2]) / 2
    m = DefinedClassesROCAUCMetric(name="val_auc")
    m(probs, _onehot(labels, 3))
    with caplog.at_level("WARNING", logger="monai_gmr.evaluation.metrics"):
        assert m.aggregate() == pytest.approx(want, abs=1e-12)
        assert m.aggregate() == pytest.approx(want, abs=1e-12)
    warned = [r.getMessage() for r in caplog.records if "undefined" in r.getMessage()]
    assert len(warned) == 1 and "val_auc" in warned[0] and "class(es) [2]" in warned[0] and "class 2: no sample" in warned[0]
    # only one class present: nothing is defined -> NaN (the training config refuses such a validation split)
    m1 = DefinedClassesROCAUCMetric()
    m1(probs, _onehot(torch.zeros(30, dtype=torch.long), 3))
    assert math.isnan(m1.aggregate())
    # the handler: a MONAI metric handler (like monai.handlers.ROCAUC) over this metric
    h = DefinedClassesROCAUC()
    assert isinstance(h, IgniteMetricHandler) and isinstance(h.metric_fn, DefinedClassesROCAUCMetric)


def test_masked_out_predictions_are_no_false_positives():
    """A predicted foreground pixel outside the mask belongs to no class: it is no false positive (the prediction's
    one-hot is masked as well as the label's)."""
    lab = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    lab[0, 0, :2, :2] = 1
    pred = lab.clone()
    pred[0, 0, 3, 3] = 1  # a false positive ...
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[3, 3] = False  # ... outside the valid region
    acc = SegmentationAccumulator(("dice", "iou"))
    acc.update((pred.float() * 2 - 1) * 3.0, lab, mask)
    r = acc.compute()
    assert r["dice"] == pytest.approx(1.0) and r["iou"] == pytest.approx(1.0)
    unmasked = SegmentationAccumulator(("dice",))
    unmasked.update((pred.float() * 2 - 1) * 3.0, lab, None)
    assert unmasked.compute()["dice"] == pytest.approx(2 * 4 / (2 * 4 + 1))


def test_segmentation_macro_auc_leaves_out_a_class_without_pixels():
    """3 classes, class 2 absent from the label: the pixel macro AUC is class 1's alone (not NaN)."""
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 6, 6)
    lab = (torch.rand(1, 1, 6, 6) > 0.5).long()  # classes 0 and 1 only
    acc = SegmentationAccumulator(("auc",))
    acc.update(logits, lab)
    expected = roc_auc_exact(logits.softmax(1)[:, 1].reshape(-1), lab.reshape(-1) == 1)
    assert not math.isnan(expected)
    assert acc.compute()["auc"] == pytest.approx(expected)


def test_binary_classification_scores_class_one_only():
    """Binary outputs: one AUC, class 1's (documented in class_aucs), for 2-channel softmax and 1-channel sigmoid."""
    for logits in (torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), torch.tensor([[-2.0], [1.0], [3.0], [-1.0]])):
        acc = ClassificationAccumulator()
        acc.update(logits, torch.tensor([0, 1, 0, 1]))
        assert list(acc.class_aucs()) == [1] and acc.class_aucs()[1] == pytest.approx(0.5)


def test_include_background_adds_class_zero_to_the_pixel_macro_auc():
    """``include_background=True`` averages the one-vs-rest pixel AUC of every class, class 0 included; ``False``
    the foreground classes' only. Three classes: with two, class 0's AUC equals class 1's and could not tell."""
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 8, 8)
    lab = torch.randint(0, 3, (1, 1, 8, 8))
    probs = logits.softmax(1)
    per_class = [roc_auc_exact(probs[:, c].reshape(-1), lab.reshape(-1) == c) for c in range(3)]
    assert per_class[0] != pytest.approx((per_class[1] + per_class[2]) / 2)  # the two averages differ here
    for include, classes in ((True, (0, 1, 2)), (False, (1, 2))):
        acc = SegmentationAccumulator(("auc",), include_background=include)
        acc.update(logits, lab)
        assert acc.compute()["auc"] == pytest.approx(sum(per_class[c] for c in classes) / len(classes)), include


def test_defined_classes_roc_auc_handler_warns_under_its_attached_name(caplog):
    """Attached to an engine as ``name``, the handler's warning about an undefined class names that metric (so a log
    with several AUC handlers says which one left a class out)."""
    from ignite.engine import Engine

    from monai_gmr.evaluation import DefinedClassesROCAUC

    g = torch.Generator().manual_seed(0)
    batches = [(torch.softmax(torch.randn(8, 3, generator=g), 1), _onehot(torch.arange(8) % 2, 3)) for _ in range(2)]
    engine = Engine(lambda e, batch: batch)
    DefinedClassesROCAUC().attach(engine, "val_auc_attached")
    with caplog.at_level("WARNING", logger="monai_gmr.evaluation.metrics"):
        engine.run(batches)
    assert 0.0 <= engine.state.metrics["val_auc_attached"] <= 1.0
    warned = [r.getMessage() for r in caplog.records if "undefined" in r.getMessage()]
    assert warned and all("val_auc_attached" in w for w in warned), warned


def test_float_labels_that_are_not_whole_numbers_are_refused():
    """``y.long()`` truncated a resampled label's 0.5 (or a soft target's 0.7) to class 0: the foreground shrank
    (or every sample became class 0, the AUC NaN) without a word. Whole-number floats still work."""
    lab = torch.zeros(1, 1, 4, 4)
    lab[..., :2, :2] = 1.0
    logits = (lab * 2 - 1) * 5
    acc = SegmentationAccumulator(("dice",))
    acc.update(logits, lab)  # whole-number floats: accepted
    assert acc.compute()["dice"] == 1.0
    soft = lab.clone()
    soft[..., 0, 0] = 0.5  # a bilinear-resampled label edge
    with pytest.raises(ValueError, match="whole class indices.*0.5"):
        SegmentationAccumulator(("dice",)).update(logits, soft)
    cls = ClassificationAccumulator()
    cls.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, 1.0]))
    assert cls.compute() == {"accuracy": 1.0, "auc": 1.0}
    with pytest.raises(ValueError, match="whole class indices"):
        ClassificationAccumulator().update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.2, 0.7]))
    cls = ClassificationAccumulator()  # label-smoothed one-hot targets are argmax-ed, not refused
    cls.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    assert cls.compute()["accuracy"] == 1.0


def test_classification_refuses_spatial_outputs_naming_the_task():
    """A segmentation network's (N, C, H, W) maps under task='classification' failed with a bare broadcasting error,
    and a (N, C, 1, 1) head broadcast against the (N,) labels: accuracy 2.0 for a perfect one on 4 samples."""
    with pytest.raises(ValueError, match=r"\(N, C\).*task='segmentation'"):
        ClassificationAccumulator().update(torch.randn(2, 2, 4, 4), torch.tensor([0, 1]))
    y = torch.tensor([0, 1, 1, 0])
    with pytest.raises(ValueError, match=r"\(N, C, 1, 1\)"):
        ClassificationAccumulator().update((torch.nn.functional.one_hot(y, 2).float() * 5)[..., None, None], y)


def test_false_positives_on_an_image_without_foreground_are_left_out_like_monai_ignore_empty():
    """Documented convention (MONAI's ignore_empty=True): an image with no foreground in the region is left out of
    Dice/IoU whatever the prediction, so its false positives cost nothing (they do lower the pixel AUC)."""
    from monai.metrics import DiceMetric

    fp = torch.full((1, 1, 8, 8), 5.0)  # foreground everywhere
    empty = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    acc = SegmentationAccumulator(("dice", "iou"))
    acc.update(fp, empty)
    assert math.isnan(acc.compute()["dice"]) and math.isnan(acc.compute()["iou"])
    pred_oh = torch.cat([torch.zeros_like(fp), torch.ones_like(fp)], 1)
    assert torch.isnan(DiceMetric(include_background=False, ignore_empty=True)(pred_oh, 1 - pred_oh)).all()
    lab = empty.clone()
    lab[..., :2, :2] = 1  # with one scorable image the mean is that image's Dice (2*4 / (64 + 4))
    acc.update(fp, lab)
    assert acc.compute()["dice"] == pytest.approx(8 / 68)


def test_nan_outputs_are_refused_for_every_metric_not_read_as_class_0():
    """Only the AUC refused NaN outputs; argmax read a NaN pixel (sample) as class 0, so Dice/IoU/accuracy scored a
    partly diverged network's NaNs as confident background (Dice 0.857 here instead of an error)."""
    lab = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    lab[..., :2, :2] = 1
    logits = (lab.float() * 2 - 1) * 5
    logits[..., 0, 0] = float("nan")
    for out in (logits, torch.cat([-logits, logits], 1)):
        for metrics in (("dice",), ("iou",), ("auc",)):
            with pytest.raises(ValueError, match="NaN"):
                SegmentationAccumulator(metrics).update(out, lab)
    with pytest.raises(ValueError, match="NaN"):
        acc = ClassificationAccumulator(("accuracy",))
        acc.update(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), torch.tensor([1, 1]))


def _two_nuclei() -> torch.Tensor:
    gt = torch.zeros(6, 12, dtype=torch.long)
    gt[1:3, 0:5], gt[1:3, 7:12] = 1, 2  # 10 px each
    return gt


def test_aji_is_kumars_original_not_aji_plus():
    """Documented variant: a prediction may pair with several ground-truth nuclei (Kumar / HoVer-Net get_fast_aji).
    One prediction (24 px) merging two nuclei (10 px each): Kumar = (10 + 10) / (24 + 24) = 20/48; AJI+ (one-to-one)
    would give 10 / (24 + 10) = 10/34."""
    from monai_gmr.evaluation.metrics import aggregated_jaccard_index, instance_metrics

    gt = _two_nuclei()
    pred = torch.zeros_like(gt)
    pred[1:3, 0:12] = 5
    assert aggregated_jaccard_index(pred, gt) == pytest.approx(20 / 48)
    assert aggregated_jaccard_index(pred, gt) != pytest.approx(10 / 34)
    # the merge has IoU 10/24 < 0.5 with each nucleus: no PQ match at all -> 0
    assert instance_metrics(pred, gt)["pq"] == 0.0
    # one nucleus split into two predictions (6 px and 4 px): pairs with the larger, the other is an unpaired FP
    split = torch.zeros_like(gt)
    split[1:3, 0:3], split[1:3, 3:5], split[1:3, 7:12] = 17, 3, 40  # non-contiguous ids
    assert aggregated_jaccard_index(split, gt) == pytest.approx((6 + 10) / (10 + 10 + 4))
    # PQ: matches (IoU 0.6 and 1.0), FP 1, FN 0 -> 1.6 / (2 + 0.5)
    assert instance_metrics(split, gt)["pq"] == pytest.approx(1.6 / 2.5, abs=1e-5)


def test_instance_metrics_edge_cases_hand_computed():
    """Perfect, empty and IoU = 0.5 (not a PQ match: strictly above 0.5), uint16 ids > 255 and whole float ids."""
    from monai_gmr.evaluation.metrics import aggregated_jaccard_index, instance_metrics

    gt = _two_nuclei()
    big = (gt * 300).to(torch.int32)  # ids 300, 600, as read from a uint16 PNG
    assert instance_metrics(big, gt) == pytest.approx({"aji": 1.0, "pq": 1.0}, abs=1e-5)
    assert instance_metrics(big.float(), gt.double()) == pytest.approx({"aji": 1.0, "pq": 1.0}, abs=1e-5)
    empty = torch.zeros_like(gt)
    assert instance_metrics(empty, gt) == {"aji": 0.0, "pq": 0.0}
    assert instance_metrics(gt, empty) == {"aji": 0.0, "pq": 0.0}
    both = instance_metrics(empty, empty)
    assert math.isnan(both["aji"]) and math.isnan(both["pq"])
    half = torch.zeros_like(gt)
    half[1:3, 0:10] = 1  # 20 px over nucleus 1 (10 px): IoU exactly 0.5 with nucleus 1, 6/24 with nucleus 2
    assert instance_metrics(half, gt)["pq"] == 0.0
    assert aggregated_jaccard_index(half, gt) == pytest.approx((10 + 6) / (20 + 24))  # both pair with it


@pytest.mark.parametrize(
    "bad, match",
    [(-1.0, "pred instance ids must be >= 0"), (math.nan, "pred instance ids contain NaN"),
     (math.inf, "pred instance ids contain NaN or infinite"), (1.5, "pred instance ids must be whole")],
)  # fmt: skip
def test_instance_metrics_refuse_bad_ids_by_name(bad, match):
    """A negative id gave AJI 0 but PQ 1 for the same map, NaN/inf turned into huge negative ids and 1.5 was
    truncated to 1, all silently: now a ValueError naming the map."""
    from monai_gmr.evaluation.metrics import aggregated_jaccard_index, instance_metrics

    gt = _two_nuclei().float()
    pred = gt.clone()
    pred[gt == 1] = bad
    for fn in (aggregated_jaccard_index, instance_metrics):
        with pytest.raises(ValueError, match=match):
            fn(pred, gt)
        with pytest.raises(ValueError, match=match.replace("pred", "gt")):
            fn(gt, pred)
    with pytest.raises(ValueError, match="same shape"):
        instance_metrics(gt, gt[:3], ("pq",))
    logits = torch.zeros(1, 2, 6, 12)
    with pytest.raises(ValueError, match=match.replace("pred", "instances")):
        SegmentationAccumulator(("aji",)).update(logits, torch.zeros(1, 1, 6, 12, dtype=torch.long), instances=pred[None, None])


def test_float64_probabilities_keep_their_precision_in_the_auc():
    """Float64 outputs were rounded to float32 before scoring: distinct probabilities close to 1 became ties, and the
    macro ROC-AUC of DefinedClassesROCAUCMetric read 0.75 where MONAI's ROCAUCMetric gives 1.0."""
    from monai.metrics import ROCAUCMetric

    from monai_gmr.evaluation.metrics import DefinedClassesROCAUCMetric, to_probabilities

    p = torch.tensor([[2e-9, 1 - 2e-9], [1e-9, 1 - 1e-9], [3e-9, 1 - 3e-9], [0.5, 0.5]], dtype=torch.float64)
    y = torch.tensor([[0, 1], [0, 1], [1, 0], [1, 0]], dtype=torch.float64)
    ref, ours = ROCAUCMetric(), DefinedClassesROCAUCMetric()
    ref(p, y)
    ours(p, y)
    assert ours.aggregate() == pytest.approx(ref.aggregate()) == 1.0
    assert to_probabilities(p.log(), "softmax").dtype == torch.float64
    assert to_probabilities(torch.zeros(2, 2, dtype=torch.float16), None).dtype == torch.float32


def test_exact_auc_merge_states_replaces_the_scores_it_held():
    """``merge_states`` replaces what the accumulator held by the union of the states, its own included (as
    ``rotation_robustness(distributed=True)`` passes them): its own scores are not counted twice (mutation audit
    round 5: MT2)."""
    g = torch.Generator().manual_seed(4)
    s1, l1 = torch.rand(50, generator=g), torch.rand(50, generator=g) > 0.6
    s2, l2 = torch.rand(40, generator=g), torch.rand(40, generator=g) > 0.3
    a, b, want = ExactAUC(), ExactAUC(), ExactAUC()
    a.update(s1, l1)
    b.update(s2, l2)
    a.merge_states([a.state(), b.state()])
    want.update(torch.cat([s1, s2]), torch.cat([l1, l2]))
    assert a.counts == want.counts == (int(l1.sum() + l2.sum()), int((~l1).sum() + (~l2).sum()))
    assert a.compute() == pytest.approx(want.compute(), abs=1e-12)


def test_merging_segmentation_states_of_different_class_counts_is_refused():
    """States of a 2-class and a 3-class accumulator (different networks or ``merge_foreground`` settings on two
    ranks) are refused by name, not merged into rows of different widths (mutation audit round 5: MT7)."""
    g = torch.Generator().manual_seed(5)
    lab = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).long()
    two, three = SegmentationAccumulator(("dice", "auc")), SegmentationAccumulator(("dice", "auc"))
    two.update(torch.randn(2, 2, 8, 8, generator=g), lab)
    three.update(torch.randn(2, 3, 8, 8, generator=g), lab)
    with pytest.raises(ValueError, match=r"different numbers of classes \[2, 3\]"):
        two.merge_states([two.state(), three.state()])
