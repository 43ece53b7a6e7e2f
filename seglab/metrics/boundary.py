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


def boundary_band(masks: Tensor, d: int) -> Tensor:
    """Return the inner band (pixels within `d` of the contour) of boolean masks [..., H, W]."""
    outside = (~masks).float()
    flat = outside.reshape(-1, 1, *masks.shape[-2:])
    grown = F.max_pool2d(F.pad(flat, (d, d, d, d), value=1.0), kernel_size=2 * d + 1, stride=1)
    return masks & (grown.view(masks.shape) > 0)


def boundary_stats(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int,
    dilation_ratio: float = DEFAULT_DILATION_RATIO,
    chunk: int = 8,
) -> Tensor:
    """Return int64 [2, C]: per-class band intersection and union summed over a batch [N, H, W].

    Classes are processed `chunk` at a time to bound memory on large images.
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be [N, H, W]; got {tuple(pred.shape)} and {tuple(target.shape)}")
    d = band_width(pred.shape[-2], pred.shape[-1], dilation_ratio)
    valid = (target != ignore_index).unsqueeze(1)
    target = target.long().unsqueeze(1)
    pred = pred.long().unsqueeze(1)
    out = torch.zeros(2, num_classes, dtype=torch.int64, device=pred.device)
    for start in range(0, num_classes, chunk):
        classes = torch.arange(start, min(start + chunk, num_classes), device=pred.device).view(1, -1, 1, 1)
        gt_band = boundary_band(target == classes, d) & valid
        pred_band = boundary_band(pred == classes, d) & valid
        out[0, classes.flatten()] = (gt_band & pred_band).sum((0, 2, 3))
        out[1, classes.flatten()] = (gt_band | pred_band).sum((0, 2, 3))
    return out
