"""FCN-32s / 16s / 8s (and the seed's 4s): Long, Shelhamer & Darrell, "Fully Convolutional Networks for
Semantic Segmentation", CVPR 2015 / PAMI 2017.

Faithful choices: the stride-32 tap is scored by a 1x1 convolution (`score_fr`); each skip tap gets its own
1x1 score layer (`score_pool4`, `score_pool3`, ...) added to the upsampled coarser scores; all scoring
layers start at zero (the paper found zero init no worse than random for score_fr, and for the skips it
keeps the network's initial output equal to the coarser net's, which was critical for VGG16). With VGG16
the stride-32 tap is fc7, so fc6/fc7 run as convolutions inside the basenet. Upsampling by 2 between levels is
fixed bilinear by default; `trainable_upsampling=True` makes each a learnable deconvolution initialized to
bilinear, as in the paper. The final upsampling to input size is fixed bilinear.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from seglab.models.basenets import Basenet
from seglab.models.meta import Decoder, resize
from seglab.models.registry import DECODERS


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Weights of a per-channel bilinear-interpolation deconvolution, shape [C, C, k, k]."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    coords = torch.arange(kernel_size, dtype=torch.float32)
    filt1d = 1 - (coords - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt1d[:, None] * filt1d[None, :]
    return weight


class FCN(Decoder):
    """FCN with skips at the given strides: () -> FCN-32s, (16,) -> 16s, (16, 8) -> 8s, (16, 8, 4) -> 4s."""

    def __init__(
        self, basenet: Basenet, num_classes: int, skips: tuple[int, ...] = (16, 8), trainable_upsampling: bool = False
    ) -> None:
        self.name = f"fcn{min(skips, default=32)}s"
        super().__init__(basenet, num_classes, skips)
        self.score_fr = self._score(self.taps[self.deepest].channels)
        self.score_skips = nn.ModuleDict({str(s): self._score(self.taps[s].channels) for s in self.skips})
        self.upscores = None
        if trainable_upsampling:
            self.upscores = nn.ModuleDict()
            for s in self.skips:
                deconv = nn.ConvTranspose2d(num_classes, num_classes, 4, stride=2, padding=1, bias=False)
                deconv.weight.data.copy_(bilinear_kernel(num_classes, 4))
                self.upscores[str(s)] = deconv

    def _score(self, channels: int) -> nn.Conv2d:
        layer = nn.Conv2d(channels, self.num_classes, kernel_size=1)
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
        return layer

    def decode_deepest(self, x: Tensor) -> Tensor:
        return self.score_fr(x)

    def upsample(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        if self.upscores is not None:
            # x2 deconvolution; odd input sizes leave the skip one pixel off, closed by a bilinear resize.
            x = self.upscores[str(level)](x)
        return resize(x, skip.shape[-2:])

    def fuse(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        return x + self.score_skips[str(level)](skip)


DECODERS.register("fcn32s")(partial(FCN, skips=()))
DECODERS.register("fcn16s")(partial(FCN, skips=(16,)))
DECODERS.register("fcn8s")(partial(FCN, skips=(16, 8)))
DECODERS.register("fcn4s")(partial(FCN, skips=(16, 8, 4)))
