"""Metrics against torchmetrics, hand calculations, scipy (Boundary IoU) and bootstrap behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)

from seglab import metrics

C, IGNORE = 5, 255


def _batch(seed: int, n: int = 3, size: int = 24, ignore_share: float = 0.1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, C, (n, size, size), generator=g)
    pred = torch.where(
        torch.rand(n, size, size, generator=g) < 0.6, target, torch.randint(0, C, (n, size, size), generator=g)
    )
    target[torch.rand(n, size, size, generator=g) < ignore_share] = IGNORE
    return pred, target


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_torchmetrics(seed):
    pred, target = _batch(seed)
    cm = metrics.confusion_matrix(pred, target, C, IGNORE)
    assert cm.dtype == torch.int64
    ref_cm = MulticlassConfusionMatrix(C, ignore_index=IGNORE)(pred, target)
    assert torch.equal(cm, ref_cm)
    assert torch.equal(metrics.confusion_matrix(pred, target.to(torch.uint8), C, IGNORE), ref_cm)
    m = metrics.segmentation_metrics(cm)
    ref_iou = MulticlassJaccardIndex(C, average=None, ignore_index=IGNORE)(pred, target)
    np.testing.assert_allclose(list(m["per_class_iou"].values()), ref_iou.double(), atol=1e-6)
    ref_miou = MulticlassJaccardIndex(C, average="macro", ignore_index=IGNORE)(pred, target)
    assert m["miou"] == pytest.approx(float(ref_miou), abs=1e-6)
    ref_fw = MulticlassJaccardIndex(C, average="weighted", ignore_index=IGNORE)(pred, target)
    assert m["fw_iou"] == pytest.approx(float(ref_fw), abs=1e-6)
    ref_acc = MulticlassAccuracy(C, average="micro", ignore_index=IGNORE)(pred, target)
    assert m["pixel_acc"] == pytest.approx(float(ref_acc), abs=1e-6)
    ref_macc = MulticlassAccuracy(C, average="macro", ignore_index=IGNORE)(pred, target)
    assert m["mean_class_acc"] == pytest.approx(float(ref_macc), abs=1e-6)
    ref_dice = MulticlassF1Score(C, average="macro", ignore_index=IGNORE)(pred, target)
    assert m["dice"] == pytest.approx(float(ref_dice), abs=1e-6)
    assert m["num_pixels"] == int((target != IGNORE).sum())


def test_per_image_matrices_sum_to_the_batch_matrix():
    pred, target = _batch(3, n=4)
    per_image = metrics.per_image_confusion(pred, target, C, IGNORE)
    assert per_image.shape == (4, C, C)
    for i in range(4):
        assert torch.equal(per_image[i], metrics.confusion_matrix(pred[i : i + 1], target[i : i + 1], C, IGNORE))
    assert torch.equal(per_image.sum(0), metrics.confusion_matrix(pred, target, C, IGNORE))


def test_hand_calculation_and_absent_classes():
    # 4 classes; class 3 appears in neither label nor prediction; class 2 is only predicted.
    target = torch.tensor([[[0, 0, 1, 1, IGNORE, 0]]])
    pred = torch.tensor([[[0, 1, 1, 1, 2, 2]]])
    cm = metrics.confusion_matrix(pred, target, 4, IGNORE)
    assert cm.tolist() == [[1, 1, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    m = metrics.segmentation_metrics(cm, ["bg", "a", "b", "c"])
    assert m["per_class_iou"] == {"bg": pytest.approx(1 / 3), "a": pytest.approx(2 / 3), "b": 0.0, "c": None}
    assert m["absent_classes"] == ["c"]
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert m["pixel_acc"] == pytest.approx(3 / 5)
    # accuracy is recall: undefined for "b" (never labelled) and "c"; the mean skips both
    assert m["per_class_acc"] == {"bg": pytest.approx(1 / 3), "a": 1.0, "b": None, "c": None}
    assert m["mean_class_acc"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["per_class_dice"]["bg"] == pytest.approx(2 * 1 / (3 + 1))
    assert m["fw_iou"] == pytest.approx(3 / 5 * 1 / 3 + 2 / 5 * 2 / 3)
    assert metrics.class_iou(cm)[3].isnan()


def test_out_of_range_values_are_reported_not_masked():
    target = torch.tensor([[[0, 7, 7, IGNORE]]])
    pred = torch.zeros_like(target)
    with pytest.raises(metrics.OutOfRangeError, match=r"label values outside 0..3 and ignore 255: 7 \(2 px\)"):
        metrics.confusion_matrix(pred, target, 4, IGNORE)
    with pytest.raises(metrics.OutOfRangeError, match=r"prediction values outside 0..3: 9 \(1 px\)"):
        metrics.confusion_matrix(torch.tensor([[[0, 9]]]), torch.tensor([[[0, 1]]]), 4, IGNORE)
    for value in (4, 254, 300, -3):  # just past the classes, just below ignore, above it, negative
        bad = torch.tensor([[[0, value, IGNORE]]], dtype=torch.int16)
        with pytest.raises(metrics.OutOfRangeError, match=rf"outside 0..3 and ignore 255: {value} \(1 px\)"):
            metrics.per_image_confusion(torch.zeros_like(bad), bad, 4, IGNORE)
    # a negative ignore index works the same way
    target = torch.tensor([[[0, -1, 2, 2]]])
    cm = metrics.confusion_matrix(torch.tensor([[[0, 1, 2, 1]]]), target, 3, -1)
    assert cm.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]
    with pytest.raises(metrics.OutOfRangeError, match=r"outside 0..2 and ignore -1: -2 \(1 px\)"):
        metrics.confusion_matrix(torch.zeros(1, 1, 2, dtype=torch.long), torch.tensor([[[-2, 0]]]), 3, -1)
    with pytest.raises(TypeError, match="integer class maps"):
        metrics.confusion_matrix(pred.float(), target, 4, IGNORE)


def test_class_counts_give_the_iou_of_any_sum_of_images():
    pred, target = _batch(4, n=6, size=10)
    per_image = metrics.per_image_confusion(pred, target, C, IGNORE)
    counts = metrics.class_counts(per_image)
    assert counts.shape == (6, 3, C) and counts.dtype == torch.int64
    assert torch.equal(counts[:, 0], per_image.diagonal(dim1=1, dim2=2))
    assert torch.equal(counts[:, 1], per_image.sum(2)) and torch.equal(counts[:, 2], per_image.sum(1))
    weights = torch.tensor([3, 0, 1, 2, 0, 1])  # a resample: image 0 three times, ...
    dense = (weights.view(-1, 1, 1) * per_image).sum(0)
    compact = (weights.view(-1, 1, 1) * counts).sum(0)
    torch.testing.assert_close(metrics.counts_iou(compact), metrics.class_iou(dense), rtol=0, atol=0, equal_nan=True)


def test_bootstrap_interval_contains_estimate_and_shrinks_with_more_images():
    pred, target = _batch(5, n=160, size=12)
    per_image = metrics.class_counts(metrics.per_image_confusion(pred, target, C, IGNORE))
    widths = []
    for n in (10, 40, 160):
        boot = metrics.bootstrap_miou(per_image[:n], resamples=400, seed=0)
        low, high = boot["miou_ci"]
        point = float(metrics.pooled_miou(per_image[:n]))
        assert point == float(metrics.mean_iou(metrics.per_image_confusion(pred[:n], target[:n], C, IGNORE).sum(0)))
        assert low <= point <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # width scales about as 1/sqrt(N): 16x the images, a quarter of the width (within sampling noise)
    assert widths[2] / widths[0] == pytest.approx(0.25, rel=0.35)
    again = metrics.bootstrap_miou(per_image[:10], resamples=400, seed=0)
    assert again["miou_ci"] == metrics.bootstrap_miou(per_image[:10], resamples=400, seed=0)["miou_ci"]


def test_paired_bootstrap_separates_a_real_difference_from_none():
    pred, target = _batch(6, n=60, size=12)
    cm_a = metrics.class_counts(metrics.per_image_confusion(pred, target, C, IGNORE))
    same = metrics.paired_bootstrap(cm_a, cm_a.clone(), resamples=300)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0 and same["ci"] == [0.0, 0.0]
    worse = torch.where(torch.rand(pred.shape, generator=torch.Generator().manual_seed(1)) < 0.3, (pred + 1) % C, pred)
    cm_b = metrics.class_counts(metrics.per_image_confusion(worse, target, C, IGNORE))
    res = metrics.paired_bootstrap(cm_a, cm_b, resamples=300)
    assert res["diff"] > 0 and res["ci"][0] > 0
    assert res["p_value"] == pytest.approx(1 / 300)
    flipped = metrics.paired_bootstrap(cm_b, cm_a, resamples=300)
    assert flipped["diff"] == pytest.approx(-res["diff"])


def _reference_band(mask: np.ndarray, d: int) -> np.ndarray:
    """The paper's recipe: mask minus its erosion (3x3, d iterations), outside the image is background."""
    return mask & ~ndimage.binary_erosion(mask, np.ones((3, 3), bool), iterations=d, border_value=0)


def test_boundary_band_matches_scipy_erosion():
    rng = np.random.default_rng(0)
    mask = ndimage.binary_opening(rng.random((30, 40)) < 0.6)
    for d in (1, 2, 3):
        band = metrics.boundary_band(torch.from_numpy(mask)[None], d)[0].numpy()
        assert np.array_equal(band, _reference_band(mask, d))


@pytest.mark.parametrize(("classes", "ratio"), [(3, 0.02), (21, 0.05), (150, 0.1)])
def test_boundary_stats_equal_the_per_class_erosion_recipe(classes, ratio):
    """All classes in one pass per map equal the paper's recipe applied to each class mask in turn."""
    g = torch.Generator().manual_seed(classes)
    blocks = torch.randint(0, classes, (2, 9, 12), generator=g)
    target = blocks.repeat_interleave(5, 1).repeat_interleave(5, 2)[:, :43, :57].contiguous()
    target[torch.rand(target.shape, generator=g) < 0.05] = IGNORE
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.15, (target + 1) % classes, target % classes)
    d = metrics.band_width(43, 57, ratio)
    inter, union = metrics.boundary_stats(pred, target, classes, IGNORE, ratio)
    valid = target.numpy() != IGNORE
    for c in range(classes):
        gt = np.stack([_reference_band(t == c, d) for t in target.numpy()]) & valid
        pr = np.stack([_reference_band(p == c, d) for p in pred.numpy()]) & valid
        assert (inter[c], union[c]) == ((gt & pr).sum(), (gt | pr).sum()), c


def test_boundary_iou_hand_made_case():
    # 10x10 image, a 6x6 square at rows/cols 2..7 in the label; the prediction shifts it one column right.
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, 2:8, 2:8] = 1
    pred = torch.zeros_like(target)
    pred[0, 2:8, 3:9] = 1
    d = 1  # round(0.02 * hypot(10, 10)) = 0 -> at least 1
    assert metrics.band_width(10, 10) == d
    inter, union = metrics.boundary_stats(pred, target, 2, IGNORE)
    # class 1: both bands are 20-pixel rings sharing only rows 2 and 7 at columns 3..7 (5 + 5 pixels);
    # each ring's side columns (2 and 7 vs 3 and 8) lie inside the other square -> 10 / (20 + 20 - 10)
    assert (inter[1], union[1]) == (10, 30)
    gt_band = _reference_band(target[0].numpy() == 1, d)
    pred_band = _reference_band(pred[0].numpy() == 1, d)
    assert inter[1] == (gt_band & pred_band).sum() and union[1] == (gt_band | pred_band).sum()
    # background: its band is the image border ring (36 px) plus the ring around the square
    bg_gt = _reference_band(target[0].numpy() == 0, d)
    bg_pred = _reference_band(pred[0].numpy() == 0, d)
    assert inter[0] == (bg_gt & bg_pred).sum() and union[0] == (bg_gt | bg_pred).sum()
    assert math.isclose(metrics.band_width(375, 500), 12.5, abs_tol=0.5)


def test_boundary_ignores_ignored_pixels():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, :, 4:] = IGNORE
    pred = torch.ones(1, 8, 8, dtype=torch.long)
    inter, union = metrics.boundary_stats(pred, target, 2, IGNORE)
    assert inter.tolist() == [0, 0]
    # label band of class 0 in columns 0..3: border ring of the 8x4 block = 20 px; the prediction's
    # class-1 band (the 8x8 border ring) restricted to columns 0..3: 8 + 3 + 3 = 14 px
    assert union.tolist() == [20, 14]


def test_size_metrics_recall_bins_and_iiou():
    # one image: a small object of class 1 (4 px, 3 hit), a large one of class 1 (100 px, all hit),
    # and an object of class 2 (16 px, none hit, predicted as 1)
    target = torch.zeros(20, 20, dtype=torch.long)
    instances = torch.zeros(20, 20, dtype=torch.int32)
    target[0:2, 0:2] = 1
    instances[0:2, 0:2] = 1
    target[10:20, 10:20] = 1
    instances[10:20, 10:20] = 2
    target[0:4, 10:14] = 2
    instances[0:4, 10:14] = 3
    pred = target.clone()
    pred[0, 0] = 0
    pred[0:4, 10:14] = 1
    records = metrics.instance_records(instances, target, pred, 3, IGNORE)
    assert sorted(records.tolist()) == [[1, 4, 3], [1, 100, 100], [2, 16, 0]]
    cm = metrics.confusion_matrix(pred[None], target[None], 3, IGNORE)
    out = metrics.size_metrics(records, cm, ["bg", "a", "b"], bins=(10, 50))
    small, medium, large = out["bins"]
    assert (small["objects"], small["mean_recall"]) == (1, 0.75)
    assert (medium["objects"], medium["mean_recall"]) == (1, 0.0)
    assert (large["objects"], large["pixel_recall"]) == (1, 1.0)
    assert out["per_class_recall"]["a"] == [0.75, None, 1.0]
    # class a: mean area 52; weights 52/4 and 52/100; FP of a = 16 pixels of b predicted as a
    w_tp = 3 * 52 / 4 + 100 * 52 / 100
    w_fn = 1 * 52 / 4
    assert out["per_class_iiou"]["a"] == pytest.approx(w_tp / (w_tp + w_fn + 16))
    assert out["per_class_iiou"]["b"] == 0.0 and out["per_class_iiou"]["bg"] is None
    assert out["iiou"] == pytest.approx(out["per_class_iiou"]["a"] / 2)
    assert metrics.instance_records(instances, target, pred, 3, IGNORE).dtype == torch.int64
