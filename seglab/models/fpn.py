"""FPN: the semantic segmentation branch of Panoptic FPN (Kirillov, Girshick, He & Dollár, "Panoptic Feature
Pyramid Networks", CVPR 2019) on a feature pyramid (Lin et al., "Feature Pyramid Networks for Object
Detection", CVPR 2017), as segmentation_models_pytorch (smp) builds it.

Top-down pathway: a 1x1 lateral on the coarsest tap, then at strides 16, 8 and 4 the running map upsampled
(nearest) plus a 1x1 lateral of that tap (`pyramid_channels`, 256). Semantic head: each level goes through
as many (3x3 conv + GroupNorm(32) + ReLU + 2x bilinear upsampling) stages as it needs to reach stride 4
(one 3x3 stage without upsampling at stride 4), `segmentation_channels` (128) wide; the four maps are summed
(`merge="add"`, the paper) or concatenated (`"cat"`), dropout (smp's 0.2), a 1x1 conv scores them and the
logits are upsampled 4x (bilinear, align_corners=True, as smp). As in smp there is no 3x3 smoothing conv
on the pyramid levels. Upsampling goes to the next level's size rather than by a factor of 2, so odd input
sizes work (at multiples of 32 the two agree).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor, nn

from seglab.errors import ConfigError
from seglab.models.basenets import Basenet
from seglab.models.meta import Decoder, resize
from seglab.models.registry import DECODERS

MERGES = ("add", "cat")
GROUPS = 32


class SegmentationStage(nn.Module):
    """3x3 conv + GroupNorm + ReLU, then (bilinear, align_corners=True) upsampling to the given size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.GroupNorm(GROUPS, out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return resize(self.block(x), size, align_corners=True)


class FPN(Decoder):
    """Panoptic FPN semantic head over a top-down pyramid on the taps at the coarsest stride, 16, 8 and 4."""

    name = "fpn"

    def __init__(
        self,
        basenet: Basenet,
        num_classes: int,
        pyramid_channels: int = 256,
        segmentation_channels: int = 128,
        merge: str = "add",
        dropout: float = 0.2,
        interpolation: str = "nearest",
    ) -> None:
        if segmentation_channels < GROUPS or segmentation_channels % GROUPS:
            raise ConfigError(
                f"decoder 'fpn': segmentation_channels must be a multiple of {GROUPS} (GroupNorm groups), "
                f"got {segmentation_channels}"
            )
        if merge not in MERGES:
            raise ConfigError(f"decoder 'fpn': merge must be one of {MERGES}, got {merge!r}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"decoder 'fpn': dropout must be in [0, 1), got {dropout}")
        super().__init__(basenet, num_classes, skips=(16, 8, 4))
        self.interpolation = interpolation
        self.merge_mode = merge
        self.lateral = nn.ModuleDict(
            {str(level): nn.Conv2d(tap.channels, pyramid_channels, 1) for level, tap in self.taps.items()}
        )
        self.stages = nn.ModuleDict()
        for level in (self.deepest, *self.skips):
            steps = sum(1 for finer in self.skips if finer < level)
            widths = [pyramid_channels] + [segmentation_channels] * max(steps, 1)
            self.stages[str(level)] = nn.ModuleList(SegmentationStage(a, b) for a, b in pairwise(widths))
        self.dropout = nn.Dropout2d(dropout, inplace=True)  # on the freshly merged map, as smp
        levels = 1 + len(self.skips)
        self.score = nn.Conv2d(segmentation_channels * (levels if merge == "cat" else 1), num_classes, 1)

    def decode_deepest(self, x: Tensor) -> Tensor:
        return self.lateral[str(self.deepest)](x)

    def upsample(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        return resize(x, skip.shape[-2:], mode=self.interpolation)

    def fuse(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        return x + self.lateral[str(level)](skip)

    def merge(self, pyramid: dict[int, Tensor]) -> Tensor:
        # Each level climbs to stride 4 through the sizes of the finer levels.
        sizes = {level: tuple(p.shape[-2:]) for level, p in pyramid.items()}
        outputs = []
        for level, x in pyramid.items():
            targets = [sizes[finer] for finer in sorted(sizes, reverse=True) if finer < level] or [sizes[level]]
            for stage, size in zip(self.stages[str(level)], targets, strict=True):
                x = stage(x, size)
            outputs.append(x)
        merged = sum(outputs[1:], outputs[0]) if self.merge_mode == "add" else torch.cat(outputs, dim=1)
        return self.dropout(merged)

    def classify(self, x: Tensor) -> Tensor:
        return self.score(x)

    def final_upsample(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return resize(x, size, align_corners=True)


DECODERS.register("fpn")(FPN)
