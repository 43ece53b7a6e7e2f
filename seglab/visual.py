"""Pictures of class maps: colourized labels and overlays on the photo, one look everywhere.

TensorBoard panels during training, the report's worst-image gallery and `seglab predict`'s overlays all
use `overlay`: the dataset's palette blended over the image with `OVERLAY_ALPHA`, ignored pixels white.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE_COLOUR = (255, 255, 255)
OVERLAY_ALPHA = 0.55


def colourize(label: np.ndarray, palette: np.ndarray, ignore_index: int) -> np.ndarray:
    """Return an RGB uint8 [H, W, 3] rendering of a class map; ignored pixels white."""
    palette = np.asarray(palette, dtype=np.uint8)
    rgb = palette[np.clip(label, 0, len(palette) - 1)]
    rgb[label == ignore_index] = IGNORE_COLOUR
    return rgb


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, ignore_index: int) -> np.ndarray:
    """Return the image [H, W, 3] uint8 blended with the colourized class map [H, W]."""
    blended = (1 - OVERLAY_ALPHA) * image.astype(np.float32) + OVERLAY_ALPHA * colourize(label, palette, ignore_index)
    return blended.round().astype(np.uint8)


def panel(
    image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, palette: np.ndarray, ignore_index: int
) -> torch.Tensor:
    """Return uint8 [3, H, 3W]: the image, its label overlay and the prediction overlay side by side."""
    photo = image.permute(1, 2, 0).cpu().numpy()
    parts = [
        photo,
        overlay(photo, label.cpu().numpy(), palette, ignore_index),
        overlay(photo, pred.cpu().numpy(), palette, ignore_index),
    ]
    return torch.from_numpy(np.concatenate(parts, axis=1)).permute(2, 0, 1).contiguous()
