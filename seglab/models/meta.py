"""The meta-architecture: a basenet, an abstract decoder whose blocks are the override points, and the model.

The decoder follows the seed framework's figure (BaseFcnArch): the coarsest tap is decoded by
`decode_deepest` (decode_32s); then, for each finer level from coarse to fine, `upsample` brings the running
map to the level's resolution (upsample_x2_*) and `fuse` merges it with the level's tap (combine_16s/8s/4s);
`merge` combines the fused maps of all levels (by default it keeps the finest, the seed's data flow;
UPerNet, the panoptic FPN head and SegFormer fuse every level at once), `classify` scores the result and
`final_upsample` resizes the logits to the input. FCN-32s/16s/8s are the same network leaving early.
A decoder states its needs as "the coarsest tap plus these finer ones" (`skips`), never a fixed stride.
Subclasses override blocks, never `forward`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.fcn import FCNHead

from seglab.models.basenets import Basenet, Tap


class Decoder(nn.Module, ABC):
    """Abstract decoder: `decode_deepest` on the coarsest tap, `upsample` + `fuse` per finer level, `merge`,
    `classify`, resize.

    `skips` are the finer strides whose taps the decoder fuses (each must exist; strides at or above the
    basenet's coarsest tap are not skips and are dropped). `levels` are all the strides the decoder visits
    below the coarsest tap, coarse to fine (default: the skips); at a level where the basenet has no tap
    (stride 1, or stride 2 of a patch-embedding basenet) `upsample` and `fuse` get an empty skip, a map of
    0 channels with that level's size (smp's convention), so blocks read its size and concatenating it is
    a no-op.
    """

    name: str = "decoder"

    def __init__(
        self,
        basenet: Basenet,
        num_classes: int,
        skips: Sequence[int] = (),
        levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.deepest = basenet.deepest
        self.skips = tuple(sorted((s for s in skips if s < self.deepest), reverse=True))
        basenet.require({self.deepest, *self.skips}, self.name)
        self.levels = self.skips if levels is None else tuple(sorted(levels, reverse=True))
        available = {t.reduction for t in basenet.taps}
        used = [self.deepest, *(level for level in self.levels if level in available)]
        self.taps: dict[int, Tap] = {r: basenet.tap(r) for r in used}

    @abstractmethod
    def decode_deepest(self, x: Tensor) -> Tensor:
        """Decode the coarsest tap (nominal stride `self.deepest`, 32 for every registered basenet)."""

    def upsample(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        """Bring `x` to the spatial size of the skip tap at `level` (fixed bilinear by default)."""
        return resize(x, skip.shape[-2:])

    def fuse(self, x: Tensor, skip: Tensor, level: int) -> Tensor:
        """Merge the upsampled map `x` with the skip tap at `level`; required when the decoder has skips."""
        raise NotImplementedError(f"decoder {self.name!r} has skips {self.skips} but does not override fuse()")

    def merge(self, pyramid: dict[int, Tensor]) -> Tensor:
        """Combine the maps of every level ({stride: map}, coarsest first: the decoded deepest tap, then each
        fused level); by default keep the finest one."""
        return pyramid[min(pyramid)]

    def classify(self, x: Tensor) -> Tensor:
        """Turn the merged map into class logits (identity for decoders whose blocks already score)."""
        return x

    def final_upsample(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """Resize the logits to the input size (fixed bilinear)."""
        return resize(x, size)

    def forward(self, features: dict[int, Tensor], size: tuple[int, int]) -> Tensor:
        x = self.decode_deepest(features[self.deepest])
        pyramid = {self.deepest: x}
        for level in self.levels:
            skip = features[level] if level in self.taps else empty_level(x, size, level)
            x = self.upsample(x, skip, level)
            x = self.fuse(x, skip, level)
            pyramid[level] = x
        return self.final_upsample(self.classify(self.merge(pyramid)), size)


def empty_level(x: Tensor, size: Sequence[int], level: int) -> Tensor:
    """Return a 0-channel map of the size a stride-`level` tap of a `size` input has (the input size at 1)."""
    return x.new_empty(x.shape[0], 0, *(-(-s // level) for s in size))  # integer ceil: exportable sizes


def resize(x: Tensor, size: Sequence[int], mode: str = "bilinear", align_corners: bool | None = False) -> Tensor:
    """Resize (bilinear, align_corners=False, by default); a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        align_corners = None
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=align_corners)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad a batch [N, C, H, W] with zeros at the bottom and right to a multiple of `multiple` (no-op at 1).

    Otherwise unconditional, also when the size is already a multiple (a zero pad is a copy), so that
    torch.export traces one graph for every size.
    """
    if multiple == 1:
        return x
    height, width = x.shape[-2:]
    return F.pad(x, (0, -width % multiple, 0, -height % multiple))


class AuxHead(FCNHead):
    """The auxiliary FCN head of torchvision's segmentation models (`FCNHead`: 3x3 conv to a quarter of the
    channels + BN + ReLU, dropout 0.1, 1x1 scores; mmsegmentation's is alike) on the stride-16 tap."""

    def __init__(self, basenet: Basenet, num_classes: int, level: int = 16) -> None:
        super().__init__(basenet.tap(level).channels, num_classes)
        self.level = level


class SegmentationModel(nn.Module):
    """basenet -> decoder -> logits at the input size. Inputs are normalized float images (see `normalize`).

    Inputs are padded to the basenet's `pad_multiple` and the logits cropped back. With an auxiliary head
    (`aux_head`), training-mode forward returns (logits, aux logits), both at the input size, so that DDP and
    torch.compile wrappers carry it; in eval mode (inference, export) the head is not run.
    """

    def __init__(self, basenet: Basenet, decoder: Decoder, aux_head: AuxHead | None = None) -> None:
        super().__init__()
        self.basenet = basenet
        self.decoder = decoder
        self.aux_head = aux_head
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

    def drop_aux(self) -> SegmentationModel:
        """Remove the auxiliary head (a training-only branch) and return the model."""
        self.aux_head = None
        return self

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        height, width = x.shape[-2:]
        padded = pad_to_multiple(x, self.basenet.pad_multiple)
        features = self.basenet(padded)
        logits = self.decoder(features, padded.shape[-2:])[..., :height, :width]
        if self.aux_head is None or not self.training:
            return logits
        aux = resize(self.aux_head(features[self.aux_head.level]), padded.shape[-2:])[..., :height, :width]
        return logits, aux
