"""U-Net: Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, in the encoder-decoder form of segmentation_models_pytorch (smp) that users reach for first.

The decoder walks from the coarsest tap back to full resolution, one block per halving of the stride
(`channels` gives the blocks' widths, (256, 128, 64, 32, 16) by default: strides 16, 8, 4, 2 and 1 after a
stride-32 tap). Each block upsamples (nearest by default), concatenates the basenet's tap at that stride when
there is one, and applies two 3x3 conv + BN + ReLU; a 3x3 conv scores the last block. Basenets without a
stride-2 tap (patch-embedding stems: ConvNeXt, Swin, a ViT's pyramid) visit stride 2 without a skip, as smp
does. `attention="scse"` adds concurrent spatial and channel squeeze-and-excitation (Roy, Navab & Wachinger,
MICCAI 2018) after each concatenation and block, smp's `decoder_attention_type="scse"`; `center=True` adds
smp's center block (two 3x3 convs on the coarsest tap). With the defaults this is smp's `Unet` layer for layer
(tests/test_parity.py).
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

ATTENTIONS = (None, "scse")
INTERPOLATIONS = ("nearest", "bilinear")


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze & excitation: x * channel gate + x * spatial gate."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channel_gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )
        self.spatial_gate = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.channel_gate(x) + x * self.spatial_gate(x)


def attention_block(kind: str | None, channels: int) -> nn.Module:
    """Return the attention module named `kind` (identity for None)."""
    return SCSE(channels) if kind == "scse" and channels > 0 else nn.Identity()


class UnetBlock(nn.Module):
    """Concatenate the skip (if any), attention, two 3x3 conv + BN + ReLU, attention."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, attention: str | None) -> None:
        super().__init__()
        self.attention1 = attention_block(attention, in_channels + skip_channels) if skip_channels else nn.Identity()
        self.conv1 = Conv2dNormActivation(in_channels + skip_channels, out_channels, 3)
        self.conv2 = Conv2dNormActivation(out_channels, out_channels, 3)
        self.attention2 = attention_block(attention, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        if skip.shape[1]:
            x = self.attention1(torch.cat([x, skip], dim=1))
        return self.attention2(self.conv2(self.conv1(x)))


class Unet(Decoder):
    """smp-style U-Net decoder: one upsample + concat + two-conv block per halving of the stride."""

    name = "unet"

    def __init__(
        self,
        basenet: Basenet,
        num_classes: int,
        channels: Sequence[int] = (256, 128, 64, 32, 16),
        attention: str | None = None,
        center: bool = False,
        interpolation: str = "nearest",
    ) -> None:
        channels = tuple(channels)
        deepest = basenet.deepest
        if not channels or any(c < 1 for c in channels) or len(channels) > deepest.bit_length() - 1:
            raise ConfigError(
                f"decoder 'unet': channels must be 1 to {deepest.bit_length() - 1} positive widths (one per "
                f"halving of the stride from {deepest} to 1), got {list(channels)}"
            )
        if attention not in ATTENTIONS:
            raise ConfigError(f"decoder 'unet': attention must be one of {ATTENTIONS}, got {attention!r}")
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f"decoder 'unet': interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        levels = [deepest >> (i + 1) for i in range(len(channels))]
        available = {t.reduction for t in basenet.taps}
        super().__init__(basenet, num_classes, skips=[s for s in levels if s in available], levels=levels)
        self.interpolation = interpolation
        head = self.taps[deepest].channels
        self.center = (
            nn.Sequential(Conv2dNormActivation(head, head, 3), Conv2dNormActivation(head, head, 3))
            if center
            else nn.Identity()
        )
        widths = (head, *channels)
        self.blocks = nn.ModuleDict(
            {
                str(level): UnetBlock(
                    widths[i], self.taps[level].channels if level in self.taps else 0, widths[i + 1], attention
                )
                for i, level in enumerate(self.levels)
            }
        )
        self.score = nn.Conv2d(channels[-1], num_classes, 3, padding=1)

    def decode_deepest(self, x: Tensor) -> Tensor:
        return self.center(x)

    def upsample(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        return resize(x, skip.shape[-2:], mode=self.interpolation)

    def fuse(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        return self.blocks[str(level)](x, skip)

    def classify(self, x: Tensor) -> Tensor:
        return self.score(x)


DECODERS.register("unet")(Unet)
