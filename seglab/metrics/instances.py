"""Per-object metrics from instance masks: recall binned by object area, and instance-averaged IoU.

Recall of an object is the share of its (non-ignored) pixels predicted as its class; the object's
class is the majority label under its mask. Objects are binned by area in pixels with COCO's bins
(Lin et al., "Microsoft COCO: Common Objects in Context", 2014): small < 32^2, medium < 96^2,
large otherwise. Instance-averaged IoU (iIoU) follows the Cityscapes benchmark (Cordts et al., 2016):
true positives and false negatives are weighted per object by (mean object area of its class /
object area), false positives are not weighted; the mean object area is taken over the evaluated set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from seglab.metrics.confusion import divide, nanmean

COCO_AREA_BINS = (32 * 32, 96 * 96)
BIN_NAMES = ("small", "medium", "large")


def instance_records(instances: Tensor, target: Tensor, pred: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Return int64 [K, 3] rows (class, area, correctly predicted pixels), one per object of one image.

    `instances` [H, W] holds object ids (0 = no object); ignored pixels count for no object.
    """
    if not instances.shape == target.shape == pred.shape:
        raise ValueError(
            f"instance mask {tuple(instances.shape)}, label {tuple(target.shape)} and "
            f"prediction {tuple(pred.shape)} differ in size"
        )
    target = target.long()
    keep = (instances > 0) & (target != ignore_index)
    ids, compact = torch.unique(instances[keep].long(), return_inverse=True)
    k = ids.numel()
    labels = target[keep]
    per_class = torch.bincount(compact * num_classes + labels, minlength=k * num_classes).view(k, num_classes)
    area = per_class.sum(1)
    cls = per_class.argmax(1)
    hit = pred[keep].long() == cls[compact]
    correct = torch.bincount(compact[hit], minlength=k)
    return torch.stack([cls, area, correct], dim=1)


def area_bin(area: Tensor, bins: Sequence[int] = COCO_AREA_BINS) -> Tensor:
    """Return the bin index of each area: 0 below bins[0], 1 below bins[1], ... ."""
    return torch.bucketize(area.contiguous(), torch.tensor(list(bins), dtype=area.dtype), right=True)


def bin_labels(bins: Sequence[int] = COCO_AREA_BINS) -> list[str]:
    """Return a readable range per bin: ``area < 1024``, ``1024 <= area < 9216``, ``area >= 9216``."""
    small, large = bins
    return [f"area < {small}", f"{small} <= area < {large}", f"area >= {large}"]


def size_metrics(records: Tensor, cm: Tensor, class_names: Sequence[str], bins: Sequence[int] = COCO_AREA_BINS) -> dict:
    """Return per-size recall and iIoU from all objects' records [K, >=3] (class, area, correct, ...).

    Keys: ``bins`` (name, range, objects, mean_recall, pixel_recall), ``per_class_recall`` (class ->
    mean recall per bin, None where no object), ``iiou`` (mean over classes with objects),
    ``per_class_iiou``. `cm` is the dataset's confusion matrix, for the unweighted false positives.
    """
    if len(bins) != len(BIN_NAMES) - 1 or list(bins) != sorted(bins):
        raise ValueError(f"expected two increasing area bin edges (small/medium, medium/large), got {list(bins)}")
    records = records.to("cpu", torch.int64)
    cm = cm.to("cpu", torch.int64)
    num_classes = cm.shape[0]
    cls, area, correct = records[:, 0], records[:, 1], records[:, 2]
    recall = correct.double() / area.clamp(min=1).double()
    which = area_bin(area, bins)
    table = []
    for b, (name, label) in enumerate(zip(BIN_NAMES, bin_labels(bins), strict=True)):
        sel = which == b
        table.append(
            {
                "name": name,
                "range": label,
                "objects": int(sel.sum()),
                "mean_recall": float(recall[sel].mean()) if sel.any() else None,
                "pixel_recall": float(correct[sel].sum() / area[sel].sum()) if sel.any() else None,
            }
        )
    per_class = {}
    for c, name in enumerate(class_names):
        row = []
        for b in range(len(BIN_NAMES)):
            sel = (cls == c) & (which == b)
            row.append(float(recall[sel].mean()) if sel.any() else None)
        per_class[name] = row
    objects = torch.bincount(cls, minlength=num_classes)
    mean_area = divide(torch.bincount(cls, weights=area.double(), minlength=num_classes), objects)
    scale = mean_area[cls] / area.clamp(min=1).double()
    w_tp = torch.bincount(cls, weights=correct.double() * scale, minlength=num_classes)
    w_fn = torch.bincount(cls, weights=(area - correct).double() * scale, minlength=num_classes)
    fp = (cm.sum(0) - cm.diagonal()).double()
    iiou = divide(w_tp, w_tp + w_fn + fp)
    iiou = torch.where(objects > 0, iiou, torch.full_like(iiou, float("nan")))
    return {
        "bins": table,
        "objects": int(records.shape[0]),
        "per_class_recall": per_class,
        "iiou": None if bool(iiou.isnan().all()) else float(nanmean(iiou)),
        "per_class_iiou": {n: (None if v != v else float(v)) for n, v in zip(class_names, iiou.tolist(), strict=True)},
    }
