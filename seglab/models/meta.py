"""The meta-architecture: a basenet, an abstract decoder whose blocks are the override points, and the model.

The decoder follows the seed framework's figure (BaseFcnArch): the deepest tap is decoded by
`decode_deepest` (decode_32s); then, for each skip from coarse to fine, `upsample` brings the running map to the skip's
resolution (upsample_x2_*) and `fuse` merges the two (combine_16s/8s/4s); `classify` scores the result
and `final_upsample` resizes the logits to the input. FCN-32s/16s/8s are the same network leaving early.
Subclasses override blocks, never `forward`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.models.basenets import Basenet, Tap


class Decoder(nn.Module, ABC):
    """Abstract decoder: `decode_deepest` on the stride-32 tap, then `upsample` + `fuse` per skip, `classify`,
    resize."""

    name: str = "decoder"

    def __init__(self, basenet: Basenet, num_classes: int, skips: Sequence[int] = ()) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.skips = tuple(sorted(skips, reverse=True))
        basenet.require({32, *self.skips}, self.name)
        self.taps: dict[int, Tap] = {r: basenet.tap(r) for r in (32, *self.skips)}

    @abstractmethod
    def decode_deepest(self, x: Tensor) -> Tensor:
        """Decode the deepest (nominal stride 32) tap."""

    def upsample(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        """Bring `x` to the spatial size of the skip tap at `level` (fixed bilinear by default)."""
        return resize(x, skip.shape[-2:])

    def fuse(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        """Merge the upsampled map `x` with the skip tap at `level`; required when the decoder has skips."""
        raise NotImplementedError(f"decoder {self.name!r} has skips {self.skips} but does not override fuse()")

    def classify(self, x: Tensor) -> Tensor:
        """Turn the last fused map into class logits (identity for decoders whose blocks already score)."""
        return x

    def final_upsample(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Resize the logits to the input size (fixed bilinear)."""
        return resize(x, size)

    def forward(self, features: dict[int, Tensor], size: tuple[int, int]) -> Tensor:
        x = self.decode_deepest(features[32])
        for level in self.skips:
            x = self.upsample(x, features[level], level)
            x = self.fuse(x, features[level], level)
        return self.final_upsample(self.classify(x), size)


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize (align_corners=False); a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SegmentationModel(nn.Module):
    """basenet -> decoder -> logits at the input size. Inputs are normalized float images (see `normalize`)."""

    def __init__(self, basenet: Basenet, decoder: Decoder) -> None:
        super().__init__()
        self.basenet = basenet
        self.decoder = decoder
        self.num_classes = decoder.num_classes
        self.input_mean = basenet.input_mean
        self.input_std = basenet.input_std
        self.register_buffer("_mean", torch.tensor(self.input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.input_std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """Map uint8 images [N,3,H,W] (any device) to the float input the basenet was pretrained with."""
        if images.dtype != torch.uint8:
            raise TypeError(f"normalize expects uint8 images, got {images.dtype}")
        mean, std = self._mean.to(images.device), self._std.to(images.device)
        return (images.float() / 255.0 - mean) / std

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.basenet(x), x.shape[-2:])
