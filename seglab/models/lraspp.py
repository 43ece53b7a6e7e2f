"""LR-ASPP (Lite Reduced Atrous Spatial Pyramid Pooling): Howard et al., "Searching for MobileNetV3",
ICCV 2019, section 6.4.

The deepest tap goes through a 1x1 conv + BN + ReLU (128 channels) gated by a squeeze-and-excitation
style branch (global average pooling, 1x1 conv, sigmoid); the gated map is upsampled to the stride-8 tap
and scored by a 1x1 conv, and a 1x1 conv scores the stride-8 tap itself; the two logit maps are added.
As in torchvision's `lraspp_mobilenet_v3_large`, the gate pools globally (the paper's 49x49 pooling
with stride (16, 20) was tuned to 1024x2048 Cityscapes crops) and the paper's intended basenet runs at
output stride 16. Layer names follow torchvision's `LRASPPHead`, so its weights copy across by name.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from seglab.models.basenets import Basenet
from seglab.models.meta import Decoder
from seglab.models.registry import DECODERS


class LRASPP(Decoder):
    """Gated 1x1 features of the deepest tap plus a 1x1 score of the `low_level` tap, added as logits."""

    name = "lraspp"

    def __init__(self, basenet: Basenet, num_classes: int, inter_channels: int = 128, low_level: int = 8) -> None:
        super().__init__(basenet, num_classes, skips=(low_level,))
        high_channels = self.taps[self.deepest].channels
        self.cbr = Conv2dNormActivation(high_channels, inter_channels, 1)
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inter_channels, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(self.taps[low_level].channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def decode_deepest(self, x: Tensor) -> Tensor:
        return self.cbr(x) * self.scale(x)

    def fuse(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        return self.low_classifier(skip) + self.high_classifier(x)


DECODERS.register("lraspp")(LRASPP)
