"""DeepLabV3-lite and DeepLabV3+: Chen et al., "Rethinking Atrous Convolution for Semantic Image
Segmentation" (arXiv:1706.05587, 2017) and "Encoder-Decoder with Atrous Separable Convolution for
Semantic Image Segmentation" (ECCV 2018).

"Lite" means the head torchvision ships (and the paper's core): atrous spatial pyramid pooling (ASPP:
a 1x1 branch, three 3x3 atrous branches and an image-pooling branch, 256 channels each, projected to
256) on the deepest tap, then 3x3 conv + BN + ReLU and a 1x1 classifier; none of the heavy extras
(multi-grid, multi-scale and flipped inference, auxiliary head). The atrous rates follow the actual
stride of the deepest tap: (6, 12, 18) at output stride 16, doubled at 8, halved at 32.
DeepLabV3+ adds the paper's decoder: the ASPP output is upsampled to a low-level tap (stride 4),
concatenated with a 48-channel 1x1 projection of it, and refined by two 3x3 convs before scoring.
These run at stride 4, where two dense 3x3 convs of 256 channels cost ~43 GFLOPs at 512x512 (15x
MobileNetV2); by default they are depthwise-separable with BN + ReLU after the depthwise conv, as in
the paper's Xception model, which cuts that to ~5 GFLOPs; `separable=False` gives the dense convs.
The ASPP module is torchvision's, so `deeplabv3` on resnet50 at output stride 8 is torchvision's
`deeplabv3_resnet50` (tests/test_parity.py proves it).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.ops import Conv2dNormActivation

from seglab.errors import ConfigError
from seglab.models.basenets import Basenet
from seglab.models.meta import Decoder
from seglab.models.registry import DECODERS

RATES_AT_STRIDE_16 = (6, 12, 18)


def atrous_rates(basenet: Basenet, rates: Sequence[int] | None, who: str) -> tuple[int, ...]:
    """Return `rates`, or the paper's rates scaled to the actual stride of the basenet's deepest tap."""
    if rates is not None:
        if not rates or any(r < 1 for r in rates):
            raise ConfigError(f"decoder {who!r}: rates must be positive integers, got {list(rates)}")
        return tuple(rates)
    stride = basenet.tap(basenet.deepest).stride
    return tuple(max(1, round(r * 16 / stride)) for r in RATES_AT_STRIDE_16)


def separable_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Depthwise 3x3 + BN + ReLU, then pointwise 1x1 (in -> out channels) + BN + ReLU."""
    return nn.Sequential(
        Conv2dNormActivation(in_channels, in_channels, 3, groups=in_channels),
        Conv2dNormActivation(in_channels, out_channels, 1),
    )


class DeepLabV3(Decoder):
    """ASPP on the deepest tap, 3x3 conv + BN + ReLU, 1x1 classifier (torchvision's DeepLabHead)."""

    name = "deeplabv3"

    def __init__(
        self, basenet: Basenet, num_classes: int, rates: Sequence[int] | None = None, channels: int = 256
    ) -> None:
        super().__init__(basenet, num_classes)
        self.rates = atrous_rates(basenet, rates, self.name)
        self.aspp = ASPP(self.taps[self.deepest].channels, self.rates, channels)
        self.refine = Conv2dNormActivation(channels, channels, 3)
        self.score = nn.Conv2d(channels, num_classes, 1)

    def decode_deepest(self, x: Tensor) -> Tensor:
        return self.refine(self.aspp(x))

    def classify(self, x: Tensor) -> Tensor:
        return self.score(x)


class DeepLabV3Plus(Decoder):
    """ASPP on the deepest tap, upsampled and concatenated with a projected low-level tap, refined, scored."""

    name = "deeplabv3plus"

    def __init__(
        self,
        basenet: Basenet,
        num_classes: int,
        rates: Sequence[int] | None = None,
        channels: int = 256,
        low_level: int = 4,
        low_channels: int = 48,
        separable: bool = True,
    ) -> None:
        super().__init__(basenet, num_classes, skips=(low_level,))
        self.low_level = low_level
        self.rates = atrous_rates(basenet, rates, self.name)
        self.aspp = ASPP(self.taps[self.deepest].channels, self.rates, channels)
        self.reduce = Conv2dNormActivation(self.taps[low_level].channels, low_channels, 1)
        refine = separable_block if separable else partial(Conv2dNormActivation, kernel_size=3)
        self.refine = nn.Sequential(refine(channels + low_channels, channels), refine(channels, channels))
        self.score = nn.Conv2d(channels, num_classes, 1)

    def decode_deepest(self, x: Tensor) -> Tensor:
        return self.aspp(x)

    def fuse(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        return self.refine(torch.cat([x, self.reduce(skip)], dim=1))

    def classify(self, x: Tensor) -> Tensor:
        return self.score(x)


DECODERS.register("deeplabv3")(DeepLabV3)
DECODERS.register("deeplabv3plus", aliases=("deeplabv3+",))(DeepLabV3Plus)
