"""SegFormer's all-MLP decoder: Xie, Wang, Yu, Anandkumar, Alvarez & Luo, "SegFormer: Simple and Efficient
Design for Semantic Segmentation with Transformers", NeurIPS 2021, in the form of segmentation_models_pytorch
(smp).

Every level is handled on its own, with no top-down pathway: a linear layer (a 1x1 conv) projects each tap to
`channels` (256, the paper's B0/B1 width; B2-B5 use 768), the projections are resized to stride 4 (bilinear),
concatenated (coarsest first) and fused by a 1x1 conv + BN + ReLU; a 1x1 conv scores and the logits are
upsampled 4x (bilinear, align_corners=True, as smp). As in the paper, the taps are those at the coarsest
stride, 16, 8 and 4 (`skips`); smp also feeds a stride-2 tap when the encoder has one, which
`skips=(16, 8, 4, 2)` reproduces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from seglab.errors import ConfigError
from seglab.models.basenets import Basenet
from seglab.models.meta import Decoder, resize
from seglab.models.registry import DECODERS

FUSE_LEVEL = 4


class SegFormer(Decoder):
    """Per-level linear projections, resized to stride 4, concatenated, fused, scored."""

    name = "segformer"

    def __init__(
        self, basenet: Basenet, num_classes: int, channels: int = 256, skips: Sequence[int] = (16, 8, 4)
    ) -> None:
        if FUSE_LEVEL not in skips:
            raise ConfigError(
                f"decoder 'segformer': skips must include {FUSE_LEVEL} (the fusion stride), got {list(skips)}"
            )
        super().__init__(basenet, num_classes, skips=skips)
        self.project = nn.ModuleDict(
            {str(level): nn.Conv2d(tap.channels, channels, 1) for level, tap in self.taps.items()}
        )
        self.fusion = Conv2dNormActivation(channels * len(self.taps), channels, 1)
        self.score = nn.Conv2d(channels, num_classes, 1)

    def decode_deepest(self, x: Tensor) -> Tensor:
        return self.project[str(self.deepest)](x)

    def upsample(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        return x  # levels are projected independently (no top-down pathway): nothing to carry down

    def fuse(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        return self.project[str(level)](skip)

    def merge(self, pyramid: dict[int, Tensor]) -> Tensor:
        size = pyramid[FUSE_LEVEL].shape[-2:]
        return self.fusion(torch.cat([resize(x, size) for x in pyramid.values()], dim=1))

    def classify(self, x: Tensor) -> Tensor:
        return self.score(x)

    def final_upsample(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return resize(x, size, align_corners=True)


DECODERS.register("segformer")(SegFormer)
