"""LinkNet: Chaurasia & Culurciello, "LinkNet: Exploiting Encoder Representations for Efficient Semantic
Segmentation", VCIP 2017 (arXiv:1707.03718).

An encoder-decoder whose decoder blocks mirror the basenet's stages and add each stage's output back
(additive skips instead of U-Net's concatenation). A decoder block with input width m and output width
n is: 1x1 conv (m -> m/4), 3x3 full (transposed) conv x2 (m/4 -> m/4), 1x1 conv (m/4 -> n), each with
BN + ReLU; n is the width of the skip tap it is added to, so any basenet works. After the stride-4 level come
the paper's stride-1 decoder block 1 (m = n = width of the stride-4 tap) and its final block: 3x3 full
conv x2 (-> 32), 3x3 conv (32), 2x2 full conv x2 (-> classes). With ResNet18 this is the original
configuration (decoder widths 512->256->128->64->64->32), except that decoder block 1's output is not
added to the max-pool output (seglab basenets expose stage outputs only; see the README on parity).
With dilation (output stride 16 / 8) the blocks between taps of equal actual stride do not upsample.
"""

from __future__ import annotations

from itertools import pairwise

from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from seglab.models.basenets import Basenet
from seglab.models.meta import Decoder, resize
from seglab.models.registry import DECODERS

FINAL_CHANNELS = 32


def full_conv(in_channels: int, out_channels: int, kernel_size: int, scale: int, bias: bool = False) -> nn.Module:
    """Transposed ("full") convolution enlarging the map exactly `scale` (1 or 2) times."""
    padding = (kernel_size - scale + 1) // 2
    # Output size is (h - 1) * scale - 2 * padding + kernel_size + output_padding; solve for exactly h * scale.
    output_padding = scale + 2 * padding - kernel_size
    return nn.ConvTranspose2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=scale,
        padding=padding,
        output_padding=output_padding,
        bias=bias,
    )


class LinkNetBlock(nn.Sequential):
    """1x1 (m -> m/4), 3x3 full conv x`scale` (m/4 -> m/4), 1x1 (m/4 -> n); each with BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        mid = max(1, in_channels // 4)
        super().__init__(
            Conv2dNormActivation(in_channels, mid, 1),
            full_conv(mid, mid, 3, scale),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            Conv2dNormActivation(mid, out_channels, 1),
        )


class LinkNet(Decoder):
    """LinkNet decoder over the taps at strides 32, 16, 8, 4, then decoder block 1 and the final block."""

    name = "linknet"

    def __init__(self, basenet: Basenet, num_classes: int) -> None:
        super().__init__(basenet, num_classes, skips=(16, 8, 4))
        self.blocks = nn.ModuleDict(
            {
                str(fine): LinkNetBlock(self.taps[coarse].channels, self.taps[fine].channels, self._scale(coarse, fine))
                for coarse, fine in pairwise((self.deepest, *self.skips))
            }
        )
        width = self.taps[4].channels
        self.block1 = LinkNetBlock(width, width, scale=1)
        self.final = nn.Sequential(
            full_conv(width, FINAL_CHANNELS, 3, scale=2),
            nn.BatchNorm2d(FINAL_CHANNELS),
            nn.ReLU(inplace=True),
            Conv2dNormActivation(FINAL_CHANNELS, FINAL_CHANNELS, 3),
            full_conv(FINAL_CHANNELS, num_classes, 2, scale=2, bias=True),
        )

    def _scale(self, coarse: int, fine: int) -> int:
        return round(self.taps[coarse].stride / self.taps[fine].stride)

    def decode_deepest(self, x: Tensor) -> Tensor:
        return x

    def upsample(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        # Odd input sizes leave the x2 output one pixel off the skip; a bilinear resize closes the gap.
        return resize(self.blocks[str(level)](x), skip.shape[-2:])

    def fuse(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        return x + skip

    def classify(self, x: Tensor) -> Tensor:
        return self.final(self.block1(x))


DECODERS.register("linknet")(LinkNet)
