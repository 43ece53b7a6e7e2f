"""UPerNet: Xiao, Liu, Zhou, Jiang & Sun, "Unified Perceptual Parsing for Scene Understanding", ECCV 2018;
the decode head of mmsegmentation's Swin / ConvNeXt / BEiT recipes, in the form of
segmentation_models_pytorch (smp).

A pyramid pooling module (PSPNet's PPM: 1/2/3/6 bins, 1x1 conv + BN + ReLU each, upsampled bilinearly and
concatenated with the tap, then a 3x3 conv + BN + ReLU to `channels`, 256) decodes the coarsest tap; an FPN
top-down pathway adds a 1x1 conv + BN + ReLU lateral of each finer tap (16, 8, 4) to the upsampled running
map; every level except the PPM's gets a 3x3 conv + BN + ReLU; all levels are resized to stride 4,
concatenated (finest first) and fused by a 3x3 conv + BN + ReLU; a 1x1 conv scores and the logits are
upsampled 4x (bilinear, align_corners=True, as smp). `feature_norm=True` (smp's default) puts a LayerNorm
on each tap first, which is what transformer basenets need (mmsegmentation puts it in its Swin backbone);
`feature_norm=False` is the paper's head on raw taps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.layers import LayerNorm2d
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from seglab.models.basenets import Basenet
from seglab.models.meta import Decoder, resize
from seglab.models.pspnet import PAPER_BINS, PoolBranch, check_bins
from seglab.models.registry import DECODERS


class UPerNet(Decoder):
    """PPM on the coarsest tap + FPN over the taps at 16, 8, 4, fused at stride 4."""

    name = "upernet"

    def __init__(
        self,
        basenet: Basenet,
        num_classes: int,
        channels: int = 256,
        bins: Sequence[int] = PAPER_BINS,
        feature_norm: bool = True,
    ) -> None:
        super().__init__(basenet, num_classes, skips=(16, 8, 4))
        self.bins = check_bins(bins, self.name)
        deep = self.taps[self.deepest].channels
        self.norms = nn.ModuleDict(
            {
                str(level): LayerNorm2d(tap.channels) if feature_norm else nn.Identity()
                for level, tap in self.taps.items()
            }
        )
        self.branches = nn.ModuleList(PoolBranch(deep, channels, b) for b in self.bins)
        self.ppm_out = Conv2dNormActivation(deep + channels * len(self.bins), channels, 3)
        self.lateral = nn.ModuleDict(
            {str(s): Conv2dNormActivation(self.taps[s].channels, channels, 1) for s in self.skips}
        )
        self.smooth = nn.ModuleDict({str(s): Conv2dNormActivation(channels, channels, 3) for s in self.skips})
        self.fusion = Conv2dNormActivation(channels * (1 + len(self.skips)), channels, 3)
        self.score = nn.Conv2d(channels, num_classes, 1)

    def decode_deepest(self, x: Tensor) -> Tensor:
        x = self.norms[str(self.deepest)](x)
        pooled = [resize(branch(x), x.shape[-2:]) for branch in self.branches]
        return self.ppm_out(torch.cat([x, *pooled], dim=1))

    def fuse(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        return x + self.lateral[str(level)](self.norms[str(level)](skip))

    def merge(self, pyramid: dict[int, Tensor]) -> Tensor:
        finest = min(pyramid)
        size = pyramid[finest].shape[-2:]
        maps = [
            resize(x if level == self.deepest else self.smooth[str(level)](x), size) for level, x in pyramid.items()
        ]
        return self.fusion(torch.cat(maps[::-1], dim=1))

    def classify(self, x: Tensor) -> Tensor:
        return self.score(x)

    def final_upsample(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return resize(x, size, align_corners=True)


DECODERS.register("upernet")(UPerNet)
