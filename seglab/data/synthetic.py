"""`synthetic`: an embedded dataset drawn on the fly, so demos and tests need no download.

Each image holds 2-6 shapes (disk, square, triangle, ring, cross) of random size (from a few pixels
to most of the image), rotation, aspect, colour and texture, painted in order so that later ones
occlude earlier ones, over a textured background with shape-less distractor blobs. Each class has
its own colour and texture, but an object takes a random colour or texture often enough
(`CLASS_LOOK`) that colour alone does not tell the class: a model must learn shape, at several
scales, under occlusion. Every sample is a pure function of (seed, split, index).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import zoom

from seglab.data.base import DATASETS, SegmentationDataset, voc_palette
from seglab.errors import DatasetError

SHAPES = ("disk", "square", "triangle", "ring", "cross")
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
DEFAULT_LENGTHS = {"train": 2000, "val": 200, "test": 200}
CLASS_COLOURS = np.array([(220, 60, 50), (60, 170, 70), (60, 90, 220), (230, 200, 50), (170, 70, 200)], float)
CLASS_LOOK = 0.7
"""Probability that an object wears its class's colour (and, independently, its class's texture)."""


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Return the inside of `shape` in normalised, rotated coordinates (unit radius)."""
    if shape == "disk":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":
        angles = np.pi / 2 + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
        return np.all([u * np.cos(a) + v * np.sin(a) <= 0.5 for a in angles], axis=0)
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.36)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    raise ValueError(shape)


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, kind: int | None = None) -> np.ndarray:
    """Return a [H, W] pattern in [0, 1]: flat, stripes, checks or smooth noise (`kind` 0-3, else random)."""
    kind = rng.integers(4) if kind is None else kind
    if kind == 0:
        return np.zeros_like(yy)
    angle, period = rng.uniform(0, np.pi), rng.uniform(3, 16)
    if kind == 1:
        return 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    if kind == 2:
        return ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    coarse = rng.random((int(yy.shape[0] / period) + 2, int(yy.shape[1] / period) + 2)).astype(np.float32)
    return coarse[(yy / period).astype(int), (xx / period).astype(int)]


def render(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (image uint8 [H,W,3], label uint8 [H,W], instance ids uint8 [H,W]) drawn from `rng`."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    gradient = (xx * np.cos(a := rng.uniform(0, 2 * np.pi)) + yy * np.sin(a)) / max(height, width)
    mix = np.clip(0.5 + 0.5 * gradient + 0.3 * (_texture(rng, yy, xx) - 0.5), 0, 1)[..., None]
    image = c1 * (1 - mix) + c2 * mix
    label = np.zeros((height, width), np.uint8)
    instances = np.zeros((height, width), np.uint8)
    size = min(height, width)
    for _ in range(rng.integers(1, 4)):  # distractors: smooth-noise blobs, labelled background
        coarse = rng.random((7, 7))
        blob = zoom(coarse, (height / 7, width / 7), order=3, grid_mode=True, mode="grid-mirror")
        image = np.where((blob > 0.85)[..., None], rng.uniform(0, 255, 3), image)
    for instance in range(1, rng.integers(2, 7) + 1):
        cls = int(rng.integers(len(SHAPES)))
        radius = size * np.exp(rng.uniform(np.log(0.04), np.log(0.35)))
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        theta, aspect = rng.uniform(0, 2 * np.pi), rng.uniform(0.7, 1.4)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / (radius * aspect)
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / (radius / aspect)
        inside = _shape_mask(SHAPES[cls], u, v)
        if not inside.any():
            continue
        own_texture, own_colour = rng.random(2) < CLASS_LOOK
        pattern = _texture(rng, yy, xx, kind=cls % 4 if own_texture else None)[..., None]
        if own_colour:
            base = np.clip(CLASS_COLOURS[cls] + rng.normal(0, 25, 3), 0, 255)
            fill = base * (1 - 0.5 * pattern)
        else:
            fill = rng.uniform(0, 255, 3) * (1 - pattern) + rng.uniform(0, 255, 3) * pattern
        image = np.where(inside[..., None], fill, image)
        label[inside] = cls + 1
        instances[inside] = instance
    image = image + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label, instances


@DATASETS.register("synthetic", aliases=("embedded",))
class Synthetic(SegmentationDataset):
    """The embedded dataset: background + 5 shape classes, `length` images of `size` x `size` pixels.

    Options (`--dataset-options`): length (default 2000 train / 200 val and test), size (128), seed (0).
    """

    name = "synthetic"
    classes = ("background", *SHAPES)
    palette = voc_palette(len(SHAPES) + 1)
    ignore_index = 255
    has_instances = True

    def __init__(
        self,
        root: Path | str | None = None,
        split: str = "train",
        *,
        strict: bool = True,
        length: int | None = None,
        size: int = 128,
        seed: int = 0,
    ) -> None:
        if split not in SPLIT_CODES:
            raise DatasetError(f"synthetic has no split {split!r}; choose one of: {', '.join(SPLIT_CODES)}")
        if size < 16:
            raise DatasetError(f"synthetic: size must be at least 16 pixels, got {size}")
        self.split, self.size, self.seed = split, size, seed
        self.length = DEFAULT_LENGTHS[split] if length is None else length
        self.list_findings = []

    def __len__(self) -> int:
        return self.length

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(f"synthetic {self.split} has {self.length} samples; index {index}")
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])
        return render(rng, self.size, self.size)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (image uint8 [3,H,W], label uint8 [H,W]) of sample `index`."""
        image, label, _ = self._render(index)
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label)

    def load_instances(self, index: int) -> torch.Tensor:
        """Return the instance ids int32 [H,W] of sample `index` (0: background)."""
        return torch.from_numpy(self._render(index)[2].astype(np.int32))

    def sample_id(self, index: int) -> str:
        """Return `<split>_<index>` (e.g. `val_000012`)."""
        return f"{self.split}_{index:06d}"

    def describe(self) -> str:
        """Return a one-line summary: split, sample count, image size, seed."""
        return (
            f"synthetic {self.split}: {self.length} samples of {self.size}x{self.size}, "
            f"{self.num_classes} classes (seed {self.seed})"
        )
