"""PSPNet: Zhao, Shi, Qi, Wang & Jia, "Pyramid Scene Parsing Network", CVPR 2017, in the form of
segmentation_models_pytorch (smp).

The pyramid pooling module (PPM) average-pools the coarsest tap into 1x1, 2x2, 3x3 and 6x6 bins (`bins`),
projects each to a quarter of the tap's channels (1x1 conv + BN + ReLU; no BN on the 1x1 bin, which holds
one value per channel), upsamples them back (bilinear, align_corners=True) and concatenates them with the
tap; a 1x1 conv + BN + ReLU reduces that to `channels` (512), then dropout (0.2), a 3x3 conv scores and the
logits are upsampled to the input (bilinear, align_corners=True). As in the paper, the pooling runs on the
basenet's deepest tap: use `--output-stride 8` for the paper's dilated setting. (smp's default,
`encoder_depth=3`, cuts the encoder at stride 8 instead; see the README's parity section.)

Adaptive average pooling is computed from an integral image (`adaptive_avg_pool2d`): exactly PyTorch's
bins, but with bin edges computed from the input size at run time, so that the ONNX export keeps dynamic
heights and widths (PyTorch's exporter fixes the bins of `nn.AdaptiveAvgPool2d` to the traced size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from seglab.errors import ConfigError
from seglab.models.basenets import Basenet
from seglab.models.meta import Decoder, resize
from seglab.models.registry import DECODERS

PAPER_BINS = (1, 2, 3, 6)


def _bin_means(x: Tensor, bins: int, dim: int) -> Tensor:
    """Average `x` over `bins` adaptive bins along `dim` (-2 or -1), as adaptive_avg_pool2d bins it."""
    length = x.shape[dim]
    index = torch.arange(bins, device=x.device)
    start = index * length // bins
    end = ((index + 1) * length + bins - 1) // bins
    integral = F.pad(x.cumsum(dim), (0, 0, 1, 0) if dim == -2 else (1, 0))
    sums = integral.index_select(dim, end) - integral.index_select(dim, start)
    shape = [bins, 1] if dim == -2 else [bins]
    return sums / (end - start).to(x.dtype).view(shape)


def adaptive_avg_pool2d(x: Tensor, bins: int) -> Tensor:
    """`F.adaptive_avg_pool2d(x, bins)` from integral images, exportable with dynamic height and width."""
    return _bin_means(_bin_means(x, bins, -2), bins, -1)


class PoolBranch(nn.Module):
    """Adaptive average pooling to `bins` x `bins`, then a 1x1 conv (+ BN unless `norm=False`) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, bins: int, norm: bool = True) -> None:
        super().__init__()
        self.bins = bins
        self.project = Conv2dNormActivation(
            in_channels, out_channels, 1, norm_layer=nn.BatchNorm2d if norm else None, bias=not norm
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(adaptive_avg_pool2d(x, self.bins))


def check_bins(bins: Sequence[int], who: str) -> tuple[int, ...]:
    """Return `bins` as a tuple, or raise naming the decoder when one is not a positive integer."""
    if not bins or any(not isinstance(b, int) or b < 1 for b in bins):
        raise ConfigError(f"decoder {who!r}: bins must be positive integers, got {list(bins)}")
    return tuple(bins)


class PSPNet(Decoder):
    """Pyramid pooling on the deepest tap, 1x1 bottleneck, dropout, 3x3 scores."""

    name = "pspnet"

    def __init__(
        self,
        basenet: Basenet,
        num_classes: int,
        channels: int = 512,
        bins: Sequence[int] = PAPER_BINS,
        dropout: float = 0.2,
    ) -> None:
        super().__init__(basenet, num_classes)
        self.bins = check_bins(bins, self.name)
        width = self.taps[self.deepest].channels
        branch = width // len(self.bins)
        self.branches = nn.ModuleList(PoolBranch(width, branch, b, norm=b > 1) for b in self.bins)
        self.bottleneck = Conv2dNormActivation(width + branch * len(self.bins), channels, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.score = nn.Conv2d(channels, num_classes, 3, padding=1)

    def decode_deepest(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [resize(branch(x), size, align_corners=True) for branch in self.branches]
        return self.dropout(self.bottleneck(torch.cat([*pooled, x], dim=1)))

    def classify(self, x: Tensor) -> Tensor:
        return self.score(x)

    def final_upsample(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return resize(x, size, align_corners=True)


DECODERS.register("pspnet")(PSPNet)
