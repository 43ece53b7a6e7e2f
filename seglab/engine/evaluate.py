"""Evaluation: the `evaluate` loop (per-image confusion matrices, object and boundary statistics) and
`summarize`, which turns its result into the metrics.json content (point estimates, bootstrap CIs, sizes,
boundaries, failure analysis).

Everything the report needs is kept per image, so confidence intervals, comparisons between runs
and the worst-image gallery need no second pass over the data.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from seglab import metrics
from seglab.engine.inference import predict_logits
from seglab.errors import ConfigError


@dataclass
class EvalResult:
    """What one pass over a dataset keeps: per-image matrices, object records, boundary counts, worst images."""

    class_names: tuple[str, ...]
    ignore_index: int
    image_ids: list[str]
    per_image_cm: Tensor  # int64 [N, C, C], rows = label, cols = prediction
    objects: Tensor | None  # int64 [K, 4]: image, class, area, correct pixels; None without instance masks
    boundary: Tensor  # int64 [2, C]: band intersection and union per class
    dilation_ratio: float
    worst: list[tuple[float, int, Tensor]] = field(default_factory=list)  # (image mIoU, index, prediction)

    @property
    def cm(self) -> Tensor:
        """Return the dataset's confusion matrix [C, C]."""
        return self.per_image_cm.sum(0)

    def arrays(self) -> dict[str, np.ndarray]:
        """Return what per_image_cm.npz stores: per-image matrices, image ids, class names, object records."""
        arrays = {
            "per_image_cm": self.per_image_cm.numpy(),
            "image_ids": np.array(self.image_ids),
            "class_names": np.array(self.class_names),
        }
        if self.objects is not None:
            arrays["objects"] = self.objects.numpy()
        return arrays


class _Samples(torch.utils.data.Dataset):
    """Yields (index, image, label, instances or None) so loading can run in DataLoader workers."""

    def __init__(self, dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Tensor, Tensor, Tensor | None]:
        index = self.indices[i]
        image, label = self.dataset.load(index)
        instances = self.dataset.load_instances(index) if self.dataset.has_instances else None
        return index, image, label, instances


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | None = None,
    window_step: int | None = None,
    limit: int | None = None,
    gallery: int = 8,
    dilation_ratio: float = metrics.DEFAULT_DILATION_RATIO,
    workers: int = 0,
) -> EvalResult:
    """Return an EvalResult of `model` on `dataset` (a SegmentationDataset), one image at a time.

    `limit` evaluates the first N images; `gallery` keeps the predictions of that many images with
    the lowest per-image mIoU. Inference options are those of `predict_logits`.
    """
    model.eval()
    device = next(model.parameters()).device
    num_classes = dataset.num_classes
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise ConfigError(
            f"the model predicts {model.num_classes} classes but the dataset has {num_classes} "
            "(evaluate on the run's own dataset, or one with the same classes)"
        )
    count = len(dataset) if limit is None else min(limit, len(dataset))
    loader = torch.utils.data.DataLoader(_Samples(dataset, range(count)), batch_size=None, num_workers=workers)
    cms, ids, objects = [], [], []
    boundary = torch.zeros(2, num_classes, dtype=torch.int64, device=device)
    worst: list[tuple[float, int, Tensor]] = []
    for index, image, label, instances in tqdm(
        loader, total=count, desc="evaluate", unit="img", disable=not sys.stderr.isatty()
    ):
        probs = predict_logits(model, image[None], scales=scales, flip=flip, window=window, window_step=window_step)
        pred = probs.argmax(1)
        target = label.to(device)[None]
        try:
            cm = metrics.per_image_confusion(pred, target, num_classes, dataset.ignore_index)
        except metrics.OutOfRangeError as err:
            raise metrics.OutOfRangeError(f"{dataset.sample_id(index)}: {err}") from err
        cms.append(cm[0].cpu())
        ids.append(dataset.sample_id(index))
        boundary += metrics.boundary_stats(pred, target, num_classes, dataset.ignore_index, dilation_ratio)
        if instances is not None:
            rows = metrics.instance_records(
                instances.to(device), target[0], pred[0], num_classes, dataset.ignore_index
            ).cpu()
            objects.append(torch.cat([torch.full((rows.shape[0], 1), index), rows], dim=1))
        image_miou = float(metrics.mean_iou(cm[0].cpu()))
        if gallery > 0 and image_miou == image_miou:
            item = (-image_miou, index, pred[0].to("cpu", torch.uint8))
            if len(worst) < gallery:
                heapq.heappush(worst, item)
            elif item[:2] > worst[0][:2]:
                heapq.heapreplace(worst, item)
    if not cms:
        raise ConfigError(f"nothing to evaluate: the dataset has {len(dataset)} images and --limit is {limit}")
    worst_sorted = sorted(((-neg, index, pred) for neg, index, pred in worst), key=lambda t: (t[0], t[1]))
    return EvalResult(
        class_names=tuple(dataset.classes),
        ignore_index=dataset.ignore_index,
        image_ids=ids,
        per_image_cm=torch.stack(cms),
        objects=torch.cat(objects) if dataset.has_instances else None,
        boundary=boundary.cpu(),
        dilation_ratio=dilation_ratio,
        worst=worst_sorted,
    )


def summarize(
    result: EvalResult,
    *,
    bootstrap: int = metrics.DEFAULT_RESAMPLES,
    seed: int = 0,
    size_bins: Sequence[int] = metrics.COCO_AREA_BINS,
    top_pairs: int = 10,
) -> dict:
    """Return the JSON-ready metrics of an EvalResult: point estimates, bootstrap CI, sizes, boundary."""
    names = list(result.class_names)
    cm = result.cm
    out = metrics.segmentation_metrics(cm, names)
    boot = metrics.bootstrap_miou(result.per_image_cm, resamples=bootstrap, seed=seed)
    out["miou_ci"] = boot["miou_ci"]
    out["per_class_iou_ci"] = dict(zip(names, boot["per_class_ci"], strict=True))
    out["bootstrap"] = {k: boot[k] for k in ("resamples", "level", "seed", "miou_std")}
    inter, union = result.boundary
    band_iou = metrics.divide(inter, union)
    out["boundary"] = {
        "dilation_ratio": result.dilation_ratio,
        "miou": _scalar(metrics.nanmean(band_iou)),
        "per_class_iou": {n: _scalar(v) for n, v in zip(names, band_iou, strict=True)},
    }
    out["sizes"] = None if result.objects is None else metrics.size_metrics(result.objects[:, 1:], cm, names, size_bins)
    out["top_confusions"] = metrics.top_confusions(cm, names, top_pairs)
    per_image = metrics.mean_iou(result.per_image_cm)
    out["worst_images"] = [{"id": result.image_ids[i], "index": i, "miou": m} for m, i, _ in result.worst]
    out["num_images"] = len(result.image_ids)
    out["per_image_miou_mean"] = _scalar(metrics.nanmean(per_image))
    out["ignore_index"] = result.ignore_index
    out["confusion_matrix"] = cm.tolist()
    return out


def checkpoint_spread(entries: list[dict]) -> dict:
    """Return the per-checkpoint mIoUs with their mean, standard deviation, min and max."""
    values = torch.tensor([e["miou"] for e in entries], dtype=torch.float64)
    return {
        "checkpoints": entries,
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _scalar(value: Tensor | float) -> float | None:
    v = float(value)
    return None if v != v else v
