"""Pixel losses that return (sum, normalizer) so that a mean is exact across DDP ranks and never NaN.

`F.cross_entropy(reduction="mean")` returns NaN when every target is ignored (0 / 0). Here the loss of a
batch is ``sum / max(normalizer, 1)`` after the normalizer is summed over ranks: an all-ignored batch gives
loss 0 and zero gradients, and w ranks give the loss of one process holding the whole global batch.

OHEM follows Shrivastava, Gupta & Girshick, "Training Region-based Object Detectors with Online Hard
Example Mining" (CVPR 2016), in its pixel form (Wu, Shen & van den Hengel, "High-performance Semantic
Segmentation Using Very Deep Fully Convolutional Networks", 2016): keep the pixels whose probability of
the true class is below a threshold, and at least `min_kept` of the hardest ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.errors import ConfigError


class SegmentationLoss(nn.Module):
    """Cross-entropy with an ignore index, optional class weights and optional OHEM, computed in fp32."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_weights: Sequence[float] = (),
        ohem: bool = False,
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100000,
    ) -> None:
        super().__init__()
        if class_weights and len(class_weights) != num_classes:
            raise ConfigError(
                f"--class-weights has {len(class_weights)} values for {num_classes} classes: give one per class"
            )
        weight = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights else None
        self.register_buffer("weight", weight, persistent=False)
        self.ignore_index = ignore_index
        self.ohem, self.ohem_thresh, self.ohem_min_kept = ohem, ohem_thresh, ohem_min_kept

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Return (sum of pixel losses, normalizer) for logits [N,C,H,W] and targets [N,H,W]."""
        target = target.long()
        pixel = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="none")
        valid = target != self.ignore_index
        if self.ohem:
            valid = valid & self._hard(pixel, valid)
        if self.weight is None:
            return (pixel * valid).sum(), valid.sum().float()
        # Like PyTorch's weighted mean: each pixel counts with its class weight, in the sum and the normalizer.
        weights = self.weight[torch.where(valid, target, 0)] * valid
        return (pixel * weights).sum(), weights.sum()

    def normalizer(self, target: Tensor) -> Tensor:
        """Return a batch's normalizer before OHEM: its valid pixels, each counted with its class weight; known
        before any forward pass, so that gradient accumulation can divide every pass by the batch's total."""
        target = target.long()
        valid = target != self.ignore_index
        if self.weight is None:
            return valid.sum().float()
        return (self.weight[torch.where(valid, target, 0)] * valid).sum()

    def _hard(self, pixel: Tensor, valid: Tensor) -> Tensor:
        """Return the mask of hard pixels: true-class probability below the threshold, at least min_kept."""
        with torch.no_grad():
            if int(valid.sum()) <= self.ohem_min_kept:
                return valid
            prob = torch.where(valid, torch.exp(-pixel), torch.ones_like(pixel))
            threshold = torch.tensor(self.ohem_thresh, device=prob.device)
            if self.ohem_min_kept > 0:
                threshold = torch.maximum(threshold, prob.flatten().kthvalue(self.ohem_min_kept).values)
            return valid & (prob <= threshold)
