"""Test-time inference: whole-image (padded to the FE's stride, cropped back), sliding window,
and multi-scale / horizontal-flip averaging of class probabilities.

Multi-scale and flip averaging of softmax probabilities follows the common practice of DeepLab
(Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017). Padding goes
on the bottom and right of the normalized image with zeros (the FE's mean colour), so cropping the
top-left H x W back is exact.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_STRIDE = 32


def model_stride(model: nn.Module) -> int:
    """Return the size multiple the model's input is padded to (its FE's output stride, else 32)."""
    basenet = getattr(model, "basenet", None)
    return int(getattr(basenet, "output_stride", DEFAULT_STRIDE))


def _pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad a normalized batch [N, C, H, W] with zeros at the bottom and right to a multiple of `multiple`."""
    height, width = x.shape[-2:]
    pad_h = -height % multiple
    pad_w = -width % multiple
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def _whole(model: nn.Module, x: Tensor, multiple: int) -> Tensor:
    """Return logits [N, K, H, W] of a normalized batch, run padded and cropped back to H x W."""
    height, width = x.shape[-2:]
    return model(_pad_to_multiple(x, multiple))[..., :height, :width]


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    """Return window offsets along one axis covering [0, length), the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


def _sliding(model: nn.Module, x: Tensor, window: tuple[int, int], stride: tuple[int, int],
             multiple: int) -> Tensor:
    """Return class probabilities [N, K, H, W] averaged over overlapping windows."""
    height, width = x.shape[-2:]
    total: Tensor | None = None
    count = torch.zeros(1, 1, height, width, device=x.device, dtype=x.dtype)
    for top in _window_starts(height, window[0], stride[0]):
        for left in _window_starts(width, window[1], stride[1]):
            crop = x[..., top:top + window[0], left:left + window[1]]
            probs = _whole(model, crop, multiple).softmax(1)
            if total is None:
                total = x.new_zeros(x.shape[0], probs.shape[1], height, width)
            total[..., top:top + crop.shape[-2], left:left + crop.shape[-1]] += probs
            count[..., top:top + crop.shape[-2], left:left + crop.shape[-1]] += 1
    return total / count


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images_uint8: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
) -> Tensor:
    """Return class probabilities float32 [N, K, H, W] at the input size of uint8 images [N, 3, H, W].

    Each scale resizes the normalized images (bilinear), runs whole-image inference (or, with
    `window` (an int or (h, w)), windows of that size every `stride` pixels, default two thirds of
    the window, averaging the overlaps) and resizes the softmax back; with `flip` the mirrored images
    are added. The probabilities of all passes are averaged, so argmax gives the prediction. The
    model must be in eval mode; images go to the model's device.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4 or images_uint8.shape[1] != 3:
        raise ValueError(f"expected uint8 images [N, 3, H, W], got {images_uint8.dtype} "
                         f"{tuple(images_uint8.shape)}")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive, got {list(scales)}")
    if stride is not None and window is None:
        raise ValueError("a sliding-window stride needs a window size")
    device = next(model.parameters()).device
    multiple = model_stride(model)
    x = model.normalize(images_uint8.to(device))
    height, width = x.shape[-2:]
    win = step = None
    if window is not None:
        win = _pair(window)
        step = _pair(stride) if stride is not None else (-(-2 * win[0] // 3), -(-2 * win[1] // 3))
        if min(win) < 1 or min(step) < 1 or step[0] > win[0] or step[1] > win[1]:
            raise ValueError(f"sliding window {win} with stride {step}: both must be positive, stride <= window")
    total: Tensor | None = None
    passes = 0
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = x if size == (height, width) else F.interpolate(x, size=size, mode="bilinear",
                                                                 align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            inp = scaled.flip(-1) if mirrored else scaled
            if win is None:
                probs = _whole(model, inp, multiple).float().softmax(1)
            else:
                probs = _sliding(model, inp, win, step, multiple).float()
            if mirrored:
                probs = probs.flip(-1)
            if probs.shape[-2:] != (height, width):
                probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
            passes += 1
    return total / passes


def comma_floats(text: str) -> tuple[float, ...]:
    """Parse a comma-separated list of numbers (an argparse `type`)."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err


def add_tta_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the test-time options shared by `seglab test` and `seglab predict`: scales, flip, sliding window."""
    parser.add_argument("--scales", type=comma_floats, default=(1.0,), help="comma-separated test scales, "
                        "probabilities averaged (default 1)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=False,
                        help="also average the horizontally flipped image")
    parser.add_argument("--sliding-window", type=int, metavar="SIZE", help="infer SIZE x SIZE windows "
                        "instead of the whole image (e.g. 1024 for Cityscapes 1024x2048)")
    parser.add_argument("--stride", type=int, help="sliding-window step in pixels (default 2/3 of SIZE)")
