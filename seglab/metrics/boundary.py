"""Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation Evaluation",
CVPR 2021).

For each class, the band of a mask is its pixels within distance d of the mask's contour (the mask
minus its erosion by a (2d+1) x (2d+1) square, the image border counting as outside, as in the
paper's reference code); Boundary IoU = |G_d & P_d| / |G_d | P_d| for the label's band G_d and the
prediction's band P_d, with ignored pixels left out. d = max(1, round(dilation_ratio * image
diagonal)); the paper's default ratio is 0.02. Intersections and unions are summed over images per
class, as the confusion matrix is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_DILATION_RATIO = 0.02


def band_width(height: int, width: int, dilation_ratio: float = DEFAULT_DILATION_RATIO) -> int:
    """Return the band width d in pixels for an image of this size."""
    return max(1, round(dilation_ratio * math.hypot(height, width)))


def window_max(x: Tensor, size: int, dim: int) -> Tensor:
    """Return the maximum over every window of `size` along `dim` (length L - size + 1), by doubling: about
    2 log2(size) elementwise maxima instead of `size` per element (max_pool2d's cost grows with the window)."""
    out, width = x, 1
    while 2 * width <= size:
        length = out.shape[dim] - width
        out = torch.maximum(out.narrow(dim, 0, length), out.narrow(dim, width, length))
        width *= 2
    count = x.shape[dim] - size + 1  # out[i] covers [i, i + width); two such windows cover [i, i + size)
    return torch.maximum(out.narrow(dim, 0, count), out.narrow(dim, size - width, count))


def _square_max(x: Tensor, d: int) -> Tensor:
    """Return the maximum over the (2d+1) x (2d+1) square around each pixel of [..., H + 2d, W + 2d]."""
    return window_max(window_max(x, 2 * d + 1, -1), 2 * d + 1, -2)


def boundary_band(masks: Tensor, d: int) -> Tensor:
    """Return the inner band (pixels within `d` of the contour) of boolean masks [..., H, W]."""
    outside = F.pad((~masks).to(torch.uint8), (d, d, d, d), value=1)
    return masks & (_square_max(outside, d) > 0)


def label_band(labels: Tensor, d: int) -> Tensor:
    """Return, for a class map [..., H, W], the pixels in the inner band of their own class's mask: those whose
    (2d+1) x (2d+1) square holds another value or leaves the image. One pass serves every class."""
    padded = F.pad(labels.to(torch.int16), (d, d, d, d), value=-1)  # int16: class ids, 255 and the outside
    # The square holds the pixel itself, so it holds another value exactly when its maximum and minimum differ.
    return _square_max(padded, d) != -_square_max(-padded, d)


def boundary_stats(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int,
    dilation_ratio: float = DEFAULT_DILATION_RATIO,
) -> Tensor:
    """Return int64 [2, C]: per-class band intersection and union summed over a batch [N, H, W].

    A pixel of class c is in the label's band of c when `label_band` marks it, so the bands of all classes
    come from one pass over each map, and the counts from bincounts (union = |G| + |P| - |G & P|).
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be [N, H, W]; got {tuple(pred.shape)} and {tuple(target.shape)}")
    d = band_width(pred.shape[-2], pred.shape[-1], dilation_ratio)
    valid = target != ignore_index
    target, pred = target.long(), pred.long()
    gt_band = label_band(target, d) & valid
    pred_band = label_band(pred, d) & valid

    def count(values: Tensor) -> Tensor:
        return torch.bincount(values, minlength=num_classes)[:num_classes]

    inter = count(target[gt_band & pred_band & (target == pred)])
    return torch.stack([inter, count(target[gt_band]) + count(pred[pred_band]) - inter])
