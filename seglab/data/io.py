"""Decoding image, label and instance files, with every failure turned into a `BadSampleError`.

Rules 6 and 7 of docs/reliability.md: decode fully (`img.load()`) inside the guarded region, never
accept truncated files, refuse images above `MAX_PIXELS`, decode only the formats a dataset uses,
and read label PNGs as palette indices (no `convert`), rejecting RGB colour labels unless a colour
map is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

MAX_PIXELS = 64_000_000
"""The largest image (width x height) seglab decodes; larger files are reported, not decoded."""

INDEX_MODES = ("P", "L")


class BadSampleError(RuntimeError):
    """A sample file that cannot be used: `path` names it, `kind` is a stable key for reports."""

    def __init__(self, path: Path | str | None, reason: str, *, kind: str = "bad_sample",
                 details: dict | None = None) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        self.details = details or {}


def _open(path: Path, formats: tuple[str, ...], role: str) -> Image.Image:
    """Return the fully decoded image at `path`; raise BadSampleError saying why it cannot be."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on (set by other code); seglab refuses "
                           "to read datasets with it, since truncated files would load as grey")
    try:
        img = Image.open(path, formats=formats)
    except FileNotFoundError as err:
        raise BadSampleError(path, f"{role} file is missing", kind=f"{role}_missing") from err
    except (OSError, ValueError) as err:
        size = path.stat().st_size if path.is_file() else 0
        reason = "empty file (0 bytes)" if size == 0 else f"not a {'/'.join(formats)} file ({err})"
        raise BadSampleError(path, f"unreadable {role}: {reason}", kind=f"{role}_unreadable") from err
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()
        raise BadSampleError(path, f"{role} is {width}x{height}, above the limit of {MAX_PIXELS} pixels",
                             kind=f"{role}_too_large")
    try:
        img.load()
    except (OSError, ValueError, SyntaxError) as err:
        img.close()
        truncated = "truncated" in str(err).lower() or isinstance(err, EOFError)
        kind = f"{role}_truncated" if truncated else f"{role}_unreadable"
        raise BadSampleError(path, f"{'truncated' if truncated else 'corrupt'} {role}: {err}", kind=kind) from err
    return img


def read_image(path: Path, formats: tuple[str, ...] = ("JPEG",)) -> torch.Tensor:
    """Return the image at `path` as uint8 [3,H,W] (RGB); raise BadSampleError if it cannot be decoded."""
    with _open(path, formats, "image") as img:
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        array = np.array(rgb)  # a writable copy: torch tensors must not alias read-only memory
    return torch.from_numpy(array).permute(2, 0, 1)


def read_label_png(path: Path, colormap: np.ndarray | None = None) -> np.ndarray:
    """Return the label PNG at `path` as uint8 [H,W] raw values (palette indices or grey levels).

    An RGB(A) PNG is an error unless `colormap` (uint8 [K,3], row k = colour of value k) is given,
    in which case each colour is mapped to its row and unknown colours are an error.
    """
    with _open(path, ("PNG",), "label") as img:
        if img.mode in INDEX_MODES:
            return np.array(img)
        if img.mode in ("RGB", "RGBA") and colormap is not None:
            return _colours_to_indices(np.asarray(img)[..., :3], colormap, path)
        if img.mode in ("RGB", "RGBA"):
            raise BadSampleError(path, f"label is an {img.mode} colour image; seglab expects class indices "
                                 "(a palette 'P' or greyscale 'L' PNG). Convert it to indices, or give the "
                                 "dataset a colour map (folder: R G B after each name in classes.txt)",
                                 kind="rgb_label")
        raise BadSampleError(path, f"label PNG has mode {img.mode}; expected 'P' or 'L' (8-bit indices)",
                             kind="label_unreadable")


def _colours_to_indices(rgb: np.ndarray, colormap: np.ndarray, path: Path) -> np.ndarray:
    """Return the row of `colormap` matching each pixel of `rgb`; raise BadSampleError on other colours."""
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    known = (colormap[:, 0].astype(np.int32) << 16) | (colormap[:, 1].astype(np.int32) << 8) | colormap[:, 2]
    order = np.argsort(known)
    position = np.clip(np.searchsorted(known[order], codes), 0, len(known) - 1)
    found = known[order][position] == codes
    if not found.all():
        values, counts = np.unique(codes[~found], return_counts=True)
        listed = ", ".join(f"({v >> 16},{(v >> 8) & 255},{v & 255}) ({c} px)"
                           for v, c in zip(values, counts, strict=True))
        raise BadSampleError(path, f"label colours not in the colour map: {listed}", kind="label_values",
                             details={"colours": {f"{v >> 16},{(v >> 8) & 255},{v & 255}": int(c)
                                                  for v, c in zip(values, counts, strict=True)}})
    return order[position].astype(np.uint8)


def read_instance_png(path: Path) -> np.ndarray:
    """Return an instance-id PNG (8- or 16-bit, e.g. Cityscapes instanceIds) as int32 [H,W]."""
    with _open(path, ("PNG",), "instances") as img:
        if img.mode not in ("P", "L", "I", "I;16"):
            raise BadSampleError(path, f"instance PNG has mode {img.mode}; expected 8- or 16-bit ids",
                                 kind="instances_unreadable")
        return np.asarray(img).astype(np.int32)
