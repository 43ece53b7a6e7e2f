"""Bootstrap over images: confidence intervals of mIoU and paired tests of an mIoU difference.

Each resample draws N images with replacement and sums their per-image class counts (true positives,
label and predicted pixels per class, `seglab.metrics.class_counts`), so no re-inference is needed
(Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, percentile interval). The paired test
resamples the same images for two models and reads the distribution of the difference (Koehn,
"Statistical Significance Tests for Machine Translation Evaluation", 2004). Draws come from a seeded
NumPy generator, so a report is reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from seglab.metrics.confusion import counts_iou, nanmean

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95


def resample_weights(num_images: int, resamples: int, seed: int) -> Tensor:
    """Return [resamples, num_images] float64 counts: how often each image is drawn in each resample."""
    if num_images < 1:
        raise ValueError("the bootstrap needs at least one image")
    if resamples < 1:
        raise ValueError(f"the bootstrap needs at least one resample, got {resamples}")
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(num_images, np.full(num_images, 1.0 / num_images), size=resamples)
    return torch.from_numpy(weights.astype(np.float64))


def resampled_class_iou(per_image: Tensor, weights: Tensor) -> Tensor:
    """Return per-class IoU [resamples, C] of each resample (NaN where a class is absent in it)."""
    n, rows, c = per_image.shape
    summed = weights @ per_image.reshape(n, rows * c).to("cpu", torch.float64)
    return counts_iou(summed.view(-1, rows, c))


def _interval(samples: Tensor, level: float) -> list[float | None]:
    """Return the percentile interval [low, high] of `samples`, ignoring NaN (None if all NaN)."""
    values = samples[~samples.isnan()].numpy()
    if values.size == 0:
        return [None, None]
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [float(low), float(high)]


def bootstrap_miou(
    per_image: Tensor, resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL, seed: int = 0
) -> dict:
    """Return the bootstrap of mIoU over images: ``miou_ci`` [low, high], ``miou_std``, ``per_class_ci``.

    `per_image` holds class counts [N, 3, C] (`seglab.metrics.class_counts` of per-image confusion
    matrices); per_class_ci is a list (per class) of [low, high] or [None, None].
    """
    weights = resample_weights(per_image.shape[0], resamples, seed)
    iou = resampled_class_iou(per_image, weights)
    miou = nanmean(iou)
    return {
        "miou_ci": _interval(miou, level),
        "miou_std": float(miou[~miou.isnan()].std()) if resamples > 1 else None,
        "per_class_ci": [_interval(iou[:, k], level) for k in range(iou.shape[1])],
        "resamples": resamples,
        "level": level,
        "seed": seed,
    }


def paired_bootstrap(
    a: Tensor, b: Tensor, resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL, seed: int = 0
) -> dict:
    """Return the paired bootstrap of mIoU(A) - mIoU(B) over the same images.

    Keys: ``diff`` (on all images), ``ci`` [low, high], ``p_value`` (two-sided: twice the share of
    resamples on the far side of zero, at least 1/resamples), ``resamples``, ``level``, ``seed``.
    `a` and `b` are per-image class counts [N, 3, C] of the same images in the same order.
    """
    if a.shape != b.shape:
        raise ValueError(f"per-image class counts differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    weights = resample_weights(a.shape[0], resamples, seed)
    diffs = nanmean(resampled_class_iou(a, weights)) - nanmean(resampled_class_iou(b, weights))
    diff = float(pooled_miou(a) - pooled_miou(b))
    below = float((diffs <= 0).double().mean())
    above = float((diffs >= 0).double().mean())
    p_value = min(1.0, max(2.0 * min(below, above), 1.0 / resamples))
    return {
        "diff": diff,
        "ci": _interval(diffs, level),
        "p_value": p_value,
        "resamples": resamples,
        "level": level,
        "seed": seed,
    }


def pooled_miou(per_image: Tensor) -> Tensor:
    """Return the mIoU of the summed per-image class counts [N, 3, C]."""
    return nanmean(counts_iou(per_image.sum(0).double()))
