"""Reading and writing image, label and instance files; every read failure is a `BadSampleError`.

The one place seglab decodes pictures (datasets, `seglab predict`, export verification) and writes label
PNGs. Rules 6 and 7 of docs/reliability.md: decode fully (`img.load()`) inside the guarded region, never
accept truncated files, refuse images above `MAX_PIXELS` (and PIL's decompression-bomb warning and error,
whatever the warning filters), decode only the formats a dataset uses (`PHOTO_FORMATS` for `seglab
predict`), and read label PNGs as palette indices (no `convert`), rejecting RGB colour labels unless a
colour map is given. Whatever a decoder raises for a bad file is a `BadSampleError` naming the file.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from seglab.errors import BadSampleError
from seglab.runs import atomic_write

MAX_PIXELS = 64_000_000
"""The largest image (width x height) seglab decodes; larger files are reported, not decoded."""

INDEX_MODES = ("P", "L")
ANY_FORMAT = None
PHOTO_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
"""The formats `seglab predict` reads (its IMAGE_SUFFIXES), each decoded by PIL under the same guards."""
# What PIL's decoders raise for a damaged or hostile file (beyond OSError, which covers most); MemoryError
# is not here: it is the machine's fault, not the file's.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, IndexError, KeyError, TypeError)
BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


def _open(path: Path, formats: tuple[str, ...] | None, role: str) -> Image.Image:
    """Return the fully decoded image at `path`; raise BadSampleError saying why it cannot be."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on (set by other code); seglab refuses "
            "to read datasets with it, since truncated files would load as grey"
        )
    try:
        with warnings.catch_warnings():  # PIL only warns between its limit and twice its limit
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path, formats=formats)
    except FileNotFoundError as err:
        raise BadSampleError(path, f"{role} file is missing", kind=f"{role}_missing") from err
    except PermissionError as err:
        raise BadSampleError(path, f"{role} file cannot be read: permission denied", kind=f"{role}_unreadable") from err
    except BOMBS as err:
        raise BadSampleError(path, f"{role} is too large to decode safely ({err})", kind=f"{role}_too_large") from err
    except DECODE_ERRORS as err:
        size = path.stat().st_size if path.is_file() else 0
        wanted = f"a {'/'.join(formats)}" if formats else "an image"
        reason = "empty file (0 bytes)" if size == 0 else f"not {wanted} file ({err})"
        raise BadSampleError(path, f"unreadable {role}: {reason}", kind=f"{role}_unreadable") from err
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()
        raise BadSampleError(
            path, f"{role} is {width}x{height}, above the limit of {MAX_PIXELS} pixels", kind=f"{role}_too_large"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except BOMBS as err:
        img.close()
        raise BadSampleError(path, f"{role} is too large to decode safely ({err})", kind=f"{role}_too_large") from err
    except DECODE_ERRORS as err:
        img.close()
        truncated = "truncated" in str(err).lower() or isinstance(err, EOFError)
        kind = f"{role}_truncated" if truncated else f"{role}_unreadable"
        raise BadSampleError(path, f"{'truncated' if truncated else 'corrupt'} {role}: {err}", kind=kind) from err
    return img


def read_image(path: Path, formats: tuple[str, ...] | None = ("JPEG",), *, exif: bool = False) -> torch.Tensor:
    """Return the image at `path` as uint8 [3,H,W] (RGB); raise BadSampleError if it cannot be decoded.

    `formats` lists the PIL decoders tried (None: any); `exif` applies the EXIF orientation (photos from
    cameras and phones, as `seglab predict` reads them; dataset labels are aligned with the stored pixels).
    """
    with _open(Path(path), formats, "image") as img:
        try:
            oriented = ImageOps.exif_transpose(img) if exif else img
            rgb = oriented if oriented.mode == "RGB" else oriented.convert("RGB")
        except DECODE_ERRORS as err:  # a corrupt EXIF block or colour profile
            raise BadSampleError(path, f"corrupt image metadata: {err}", kind="image_unreadable") from err
        array = np.array(rgb)  # a writable copy: torch tensors must not alias read-only memory
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


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
            raise BadSampleError(
                path,
                f"label is an {img.mode} colour image; seglab expects class indices "
                "(a palette 'P' or greyscale 'L' PNG). Convert it to indices, or give the "
                "dataset a colour map (folder: R G B after each name in classes.txt)",
                kind="rgb_label",
            )
        raise BadSampleError(
            path, f"label PNG has mode {img.mode}; expected 'P' or 'L' (8-bit indices)", kind="label_unreadable"
        )


def _colours_to_indices(rgb: np.ndarray, colormap: np.ndarray, path: Path) -> np.ndarray:
    """Return the row of `colormap` matching each pixel of `rgb`; raise BadSampleError on other colours."""
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    known = (colormap[:, 0].astype(np.int32) << 16) | (colormap[:, 1].astype(np.int32) << 8) | colormap[:, 2]
    order = np.argsort(known)
    position = np.clip(np.searchsorted(known[order], codes), 0, len(known) - 1)
    found = known[order][position] == codes
    if not found.all():
        values, counts = np.unique(codes[~found], return_counts=True)
        listed = ", ".join(
            f"({v >> 16},{(v >> 8) & 255},{v & 255}) ({c} px)" for v, c in zip(values, counts, strict=True)
        )
        raise BadSampleError(
            path,
            f"label colours not in the colour map: {listed}",
            kind="label_values",
            details={
                "colours": {
                    f"{v >> 16},{(v >> 8) & 255},{v & 255}": int(c) for v, c in zip(values, counts, strict=True)
                }
            },
        )
    return order[position].astype(np.uint8)


def read_instance_png(path: Path) -> np.ndarray:
    """Return an instance-id PNG (8- or 16-bit, e.g. Cityscapes instanceIds) as int32 [H,W]."""
    with _open(path, ("PNG",), "instances") as img:
        if img.mode not in ("P", "L", "I", "I;16"):
            raise BadSampleError(
                path, f"instance PNG has mode {img.mode}; expected 8- or 16-bit ids", kind="instances_unreadable"
            )
        return np.asarray(img).astype(np.int32)


def write_label_png(label: np.ndarray, palette: np.ndarray, path: Path) -> Path:
    """Write a class map [H, W] atomically as an 8-bit palette PNG (pixel values are class indices)."""
    if label.max(initial=0) > 255:
        raise ValueError(f"{path}: class index {label.max()} does not fit an 8-bit palette PNG")
    img = Image.fromarray(label.astype(np.uint8))
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    img.putpalette(flat.reshape(-1).tolist())  # turns the 8-bit "L" image into a "P" (palette) image
    return write_png(img, path)


def write_png(img: Image.Image, path: Path) -> Path:
    """Write a PIL image atomically as PNG."""
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return atomic_write(path, buffer.getvalue())
