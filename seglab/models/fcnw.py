"""FCN+W: FCN with a wider, cheap decode path for thin basenets (MobileNet, ResNet18, EfficientNet-Lite).

FCN (Long et al., CVPR 2015) scores every tap with a 1x1 convolution straight to class logits, so a thin
basenet's skip taps (24-128 channels) add almost nothing to the decoder's capacity. FCN+W keeps FCN's
data flow (decode the stride-32 tap, upsample, add each skip, coarse to fine) but fuses *features*
instead of scores:

- each tap is projected to one common `width` by a 1x1 conv + BN + ReLU (a lateral, as in FPN,
  Lin et al. 2017), so taps of any width add together;
- after each addition the map is refined by a depthwise-separable 3x3 block (depthwise 3x3 + BN +
  ReLU, then 1x1 + BN + ReLU; Howard et al. 2017), which smooths the bilinear upsampling at a cost
  of about `width` x (9 + width) multiply-adds per pixel;
- one 1x1 convolution scores the finest fused level; its logits are resized to the input.

`global_context=True` concatenates the stride-32 features with their global average (broadcast) before
the projection: the "wide" decode of the seed framework's unpublished FCN+W.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from seglab.errors import ConfigError
from seglab.models.basenets import Basenet
from seglab.models.deeplab import separable_block
from seglab.models.meta import Decoder
from seglab.models.registry import DECODERS


class FCNW(Decoder):
    """FCN+W with skips at the given strides: (16, 8) -> fcnw8s, (16, 8, 4) -> fcnw4s."""

    def __init__(
        self,
        basenet: Basenet,
        num_classes: int,
        skips: tuple[int, ...] = (16, 8),
        width: int = 128,
        global_context: bool = False,
    ) -> None:
        self.name = f"fcnw{min(skips, default=32)}s"
        super().__init__(basenet, num_classes, skips)
        if width < 1:
            raise ConfigError(f"decoder {self.name!r}: width must be a positive number of channels, got {width}")
        self.width = width
        self.global_context = global_context
        deep_channels = self.taps[self.deepest].channels * (2 if global_context else 1)
        self.project = nn.ModuleDict({str(self.deepest): Conv2dNormActivation(deep_channels, width, 1)})
        self.project.update({str(s): Conv2dNormActivation(self.taps[s].channels, width, 1) for s in self.skips})
        self.refine = nn.ModuleDict({str(s): separable_block(width, width) for s in (self.deepest, *self.skips)})
        self.score = nn.Conv2d(width, num_classes, 1)

    def decode_deepest(self, x: Tensor) -> Tensor:
        if self.global_context:
            x = torch.cat([x, x.mean(dim=(2, 3), keepdim=True).expand_as(x)], dim=1)
        return self.refine[str(self.deepest)](self.project[str(self.deepest)](x))

    def fuse(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        return self.refine[str(level)](x + self.project[str(level)](skip))

    def classify(self, x: Tensor) -> Tensor:
        return self.score(x)


DECODERS.register("fcnw16s")(partial(FCNW, skips=(16,)))
DECODERS.register("fcnw8s", aliases=("fcnw",))(partial(FCNW, skips=(16, 8)))
DECODERS.register("fcnw4s")(partial(FCNW, skips=(16, 8, 4)))
