"""Confusion matrices accumulated on the device with one `bincount`, and the metrics derived from them.

Rows are labels, columns are predictions, counts are int64. Pixels labelled with the ignore index are
left out; any other label outside ``0..C-1`` (or prediction outside it) is an error that names the
values and their pixel counts, never silently masked (docs/reliability.md, rule 9).

Derived metrics follow Long et al., "Fully Convolutional Networks for Semantic Segmentation" (2015):
pixel accuracy, mean class accuracy, mean IoU and frequency-weighted IoU, plus Dice/F1. A class absent
from both labels and predictions has no IoU: it is NaN in tensors, None in JSON, and left out of means.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from seglab.errors import SeglabError


class OutOfRangeError(SeglabError, ValueError):
    """Labels or predictions hold values that are neither a class nor the ignore index."""


def _raise_out_of_range(values: Tensor, num_classes: int, what: str, ignore_index: int | None) -> None:
    """Raise OutOfRangeError listing each value outside 0..C-1 (other than `ignore_index`) and its count."""
    bad = (values < 0) | (values >= num_classes)
    if ignore_index is not None:
        bad &= values != ignore_index
    found, counts = torch.unique(values[bad], return_counts=True)
    listed = ", ".join(f"{v} ({c} px)" for v, c in zip(found.tolist(), counts.tolist(), strict=True))
    allowed = f"0..{num_classes - 1}" + ("" if ignore_index is None else f" and ignore {ignore_index}")
    raise OutOfRangeError(f"{what} values outside {allowed}: {listed}")


def _counts(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int, images: int) -> Tensor:
    """Return int64 [images, C, C] pixel counts from one bincount; raise OutOfRangeError on bad values.

    Labels are not masked (boolean indexing copies the data and dominates the cost): the bincount has
    one row per label value from min(0, ignore) to max(C - 1, ignore), the ignore row is dropped and
    any other row beyond the classes must be empty.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError(f"pred and target must be integer class maps, got {pred.dtype} and {target.dtype}")
    c = num_classes
    first = min(0, ignore_index)
    rows = max(c, ignore_index + 1) - first
    (lo, hi), (plo, phi) = (
        torch.stack([*torch.aminmax(target.long() if target.dtype == torch.bool else target), *torch.aminmax(pred)])
        .view(2, 2)
        .tolist()
    )
    if lo < first or hi >= first + rows:
        _raise_out_of_range(target, c, "label", ignore_index)
    if plo < 0 or phi >= c:
        _raise_out_of_range(pred, c, "prediction", None)
    index = torch.add(pred.long(), target, alpha=c)
    if first or images > 1:
        offset = torch.arange(images, device=index.device).view(-1, *([1] * (index.dim() - 1))) * rows - first
        index += offset * c
    counts = torch.bincount(index.flatten(), minlength=images * rows * c).view(images, rows, c)
    outside = torch.ones(rows, dtype=torch.bool)
    outside[-first : c - first] = False
    outside[ignore_index - first] = False
    if bool(counts[:, outside.to(counts.device)].any()):
        _raise_out_of_range(target, c, "label", ignore_index)
    return counts[:, -first : c - first]


def per_image_confusion(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Return one confusion matrix per image, int64 [N, C, C] (rows = label, cols = prediction).

    One `bincount` over ``(image * R + label) * C + prediction`` (R label rows, see `_counts`) computes
    all N matrices on the tensors' device.
    """
    if pred.dim() != 3:
        raise ValueError(f"pred and target must be [N, H, W]; got {tuple(pred.shape)}")
    return _counts(pred, target, num_classes, ignore_index, pred.shape[0]).contiguous()


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Return the confusion matrix int64 [C, C] of a batch (rows = label, cols = prediction)."""
    return _counts(pred, target, num_classes, ignore_index, 1)[0].contiguous()


def divide(num: Tensor, den: Tensor) -> Tensor:
    """Return num / den in float64 with NaN where den == 0 (an undefined ratio, not 0 or 1)."""
    num = num.double()
    den = den.double()
    defined = den > 0
    return torch.where(defined, num / torch.where(defined, den, 1.0), torch.full_like(num, float("nan")))


def class_iou(cm: Tensor) -> Tensor:
    """Return per-class IoU, float64 [..., C]; NaN for classes absent from labels and predictions."""
    tp = cm.diagonal(dim1=-2, dim2=-1)
    return divide(tp, cm.sum(-1) + cm.sum(-2) - tp)


def class_counts(cm: Tensor) -> Tensor:
    """Return int64 [..., 3, C] per class of confusion matrices [..., C, C]: true positives, label pixels and
    predicted pixels, all that the IoU of any sum of images needs (what `seglab test` keeps per image)."""
    return torch.stack([cm.diagonal(dim1=-2, dim2=-1), cm.sum(-1), cm.sum(-2)], dim=-2)


def counts_iou(counts: Tensor) -> Tensor:
    """Return per-class IoU, float64 [..., C], of class counts [..., 3, C] (see `class_counts`)."""
    tp, label, pred = counts.unbind(-2)
    return divide(tp, label + pred - tp)


def nanmean(values: Tensor) -> Tensor:
    """Return the mean over the last axis ignoring NaN (NaN when every value is NaN)."""
    valid = ~values.isnan()
    return divide(torch.where(valid, values, 0).sum(-1), valid.sum(-1))


def mean_iou(cm: Tensor) -> Tensor:
    """Return mIoU of one or a batch of confusion matrices [..., C, C], absent classes excluded."""
    return nanmean(class_iou(cm))


def _json(values: Tensor) -> list[float | None]:
    return [None if v != v else float(v) for v in values.tolist()]


def _named(values: Tensor, names: Sequence[str]) -> dict[str, float | None]:
    return dict(zip(names, _json(values), strict=True))


def _scalar(value: Tensor) -> float | None:
    v = float(value)
    return None if v != v else v


def segmentation_metrics(cm: Tensor, class_names: Sequence[str] | None = None) -> dict:
    """Return JSON-ready metrics of a confusion matrix [C, C] (rows = label, cols = prediction).

    Keys: ``miou``, ``per_class_iou``, ``pixel_acc``, ``mean_class_acc``, ``per_class_acc``, ``fw_iou``,
    ``dice`` (mean Dice/F1), ``per_class_dice``, ``absent_classes``, ``num_pixels``. Per-class values
    are dicts keyed by class name (``"0"``, ``"1"``... without names); None marks an undefined value:
    IoU and Dice of a class absent from labels and predictions, accuracy of a class absent from labels.
    Means skip undefined values.
    """
    cm = cm.detach().to("cpu", torch.int64)
    num_classes = cm.shape[0]
    if cm.shape != (num_classes, num_classes):
        raise ValueError(f"confusion matrix must be square, got {tuple(cm.shape)}")
    names = [str(i) for i in range(num_classes)] if class_names is None else list(class_names)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}-class confusion matrix")
    tp = cm.diagonal()
    label_count = cm.sum(1)
    pred_count = cm.sum(0)
    total = cm.sum()
    iou = class_iou(cm)
    acc = divide(tp, label_count)
    dice = divide(2 * tp, label_count + pred_count)
    freq = label_count.double() / max(int(total), 1)
    absent = [names[i] for i in range(num_classes) if label_count[i] + pred_count[i] == 0]
    return {
        "miou": _scalar(nanmean(iou)),
        "per_class_iou": _named(iou, names),
        "pixel_acc": _scalar(divide(tp.sum(), total)),
        "mean_class_acc": _scalar(nanmean(acc)),
        "per_class_acc": _named(acc, names),
        "fw_iou": _scalar((freq * torch.nan_to_num(iou)).sum()) if total > 0 else None,
        "dice": _scalar(nanmean(dice)),
        "per_class_dice": _named(dice, names),
        "absent_classes": absent,
        "num_pixels": int(total),
    }


def top_confusions(cm: Tensor, class_names: Sequence[str], k: int = 10) -> list[dict]:
    """Return the `k` largest off-diagonal cells: label, predicted class, pixels, share of label pixels."""
    cm = cm.detach().to("cpu", torch.int64)
    off = cm.clone()
    off.fill_diagonal_(0)
    values, flat = off.flatten().sort(descending=True)
    rows = cm.sum(1)
    out = []
    for value, index in zip(values[:k].tolist(), flat[:k].tolist(), strict=True):
        if value == 0:
            break
        label, pred = divmod(index, cm.shape[0])
        out.append(
            {
                "label": class_names[label],
                "predicted": class_names[pred],
                "pixels": value,
                "share_of_label": value / int(rows[label]),
            }
        )
    return out
