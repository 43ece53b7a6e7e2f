"""Joint image+label augmentation on uint8 tensors (torchvision.transforms.v2), and device normalization.

The training recipe (see `seglab.data.presets`) is the usual one (random scale, crop with padding,
horizontal flip, optional colour jitter), computed in an order that does less work: the crop
window is chosen in source pixels first, and only that window is resized, instead of resizing the
whole image and throwing most of it away. Images stay uint8 until `normalize`, which runs on the
device, so workers move 4x fewer bytes. Labels are resized with nearest-neighbour only.

All randomness comes from a `numpy.random.Generator` the caller passes in, derived from
(seed, epoch, sample index) by `AugmentedDataset`, so an augmentation never depends on which
worker process ran it (reliability rule 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from seglab.errors import ConfigError


@dataclass(frozen=True)
class Augment:
    """Hyper-parameters of the training augmentation (one per `seglab train` flag)."""

    crop: tuple[int, int] = (512, 512)  # (height, width) of the training crop
    scale_range: tuple[float, float] = (0.5, 2.0)  # random rescale factor, uniform
    flip: bool = True  # random horizontal flip, p = 0.5
    jitter: float = 0.0  # brightness/contrast/saturation factors drawn from [1 - j, 1 + j]; 0 = off
    pad_mean: bool = True  # pad images with the basenet's mean colour (0 after normalization), else black

    def __post_init__(self) -> None:
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ConfigError(f"--scale-range must satisfy 0 < MIN <= MAX, got {list(self.scale_range)}")
        if min(self.crop) < 1:
            raise ConfigError(f"--crop must be positive, got {list(self.crop)}")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"--jitter must be in [0, 1), got {self.jitter}")


def _window(length: int, scale: float, crop: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """Return (start, size) of the source window along one axis and the size it is resized to.

    Equivalent to resizing the axis to round(length * scale) and taking a random `crop` of it
    (or all of it, when shorter): the window is crop / scale source pixels at a random offset.
    """
    scaled = max(1, round(length * scale))
    if scaled <= crop:
        return 0, length, scaled
    size = min(length, max(1, round(crop / scale)))
    return int(rng.integers(0, length - size + 1)), size, crop


class TrainTransform:
    """Random scale, crop (padded where the image is smaller), flip and jitter of (image, label).

    Input: image uint8 [3,H,W], label uint8 [H,W]. Output: the same dtypes at the crop size; the
    padding is `fill` (uint8 RGB) for the image and `ignore_index` for the label.
    """

    def __init__(self, augment: Augment, ignore_index: int, fill: tuple[int, int, int] = (0, 0, 0)) -> None:
        self.augment = augment
        self.ignore_index = ignore_index
        self.fill = torch.tensor(fill if augment.pad_mean else (0, 0, 0), dtype=torch.uint8).view(3, 1, 1)

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        aug = self.augment
        scale = float(rng.uniform(*aug.scale_range))
        top, height, out_h = _window(image.shape[1], scale, aug.crop[0], rng)
        left, width, out_w = _window(image.shape[2], scale, aug.crop[1], rng)
        image = image[:, top : top + height, left : left + width]
        label = label[top : top + height, left : left + width]
        if (out_h, out_w) != (height, width):
            image = F.resize(image, [out_h, out_w], InterpolationMode.BILINEAR, antialias=True)
            label = F.resize(label[None], [out_h, out_w], InterpolationMode.NEAREST_EXACT)[0]
        if aug.flip and rng.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        if aug.jitter:
            image = self.jitter(image, rng)
        if (out_h, out_w) != aug.crop:
            image, label = self.pad(image, label)
        return image.contiguous(), label.contiguous()

    def jitter(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Return `image` with brightness, contrast and saturation scaled by factors in [1-j, 1+j]."""
        low, high = 1 - self.augment.jitter, 1 + self.augment.jitter
        for op in rng.permutation(3):
            factor = float(rng.uniform(low, high))
            adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)[op]
            image = adjust(image, factor)
        return image

    def pad(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return image and label padded at the bottom and right to the crop size."""
        height, width = self.augment.crop
        padded = self.fill.expand(3, height, width).clone()
        padded[:, : image.shape[1], : image.shape[2]] = image
        padded_label = torch.full((height, width), self.ignore_index, dtype=label.dtype)
        padded_label[: label.shape[0], : label.shape[1]] = label
        return padded, padded_label


def mean_fill(mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """Return the uint8 RGB colour of a normalization mean given in [0, 1] units."""
    return tuple(round(255 * m) for m in mean)


def normalize(
    images: torch.Tensor, mean: tuple[float, ...] | torch.Tensor, std: tuple[float, ...] | torch.Tensor
) -> torch.Tensor:
    """Return uint8 images [N,3,H,W] as float32 (x / 255 - mean) / std, computed where `images` lives."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return images.float().div_(255).sub_(mean).div_(std)
