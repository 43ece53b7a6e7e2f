"""The one inference path: whole-image (padded to the basenet's stride, cropped back), sliding window, and
multi-scale / horizontal-flip averaging of class probabilities. `seglab test`, `seglab predict`, training
validation, the exported ONNX graph (`DeployModel`) and `seglab bench` all run through it.

Multi-scale and flip averaging of softmax probabilities follows the common practice of DeepLab
(Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017). Padding goes
on the bottom and right of the normalized image with zeros (the basenet's mean colour), so cropping the
top-left H x W back is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.models.meta import pad_to_multiple

DEFAULT_STRIDE = 32


def model_stride(model: nn.Module) -> int:
    """Return the size multiple the model's input is padded to (its basenet's output stride, else 32)."""
    basenet = getattr(model, "basenet", None)
    return int(getattr(basenet, "output_stride", DEFAULT_STRIDE))


def whole_image(model: nn.Module, x: Tensor, multiple: int) -> Tensor:
    """Return logits [N, K, H, W] of a normalized batch, run padded and cropped back to H x W."""
    height, width = x.shape[-2:]
    return model(pad_to_multiple(x, multiple))[..., :height, :width]


class DeployModel(nn.Module):
    """uint8 RGB images [N, 3, H, W] -> logits [N, K, H, W]: normalize, pad to the basenet's stride, crop back.

    What `seglab export` writes as ONNX and what `seglab bench` times: whole-image inference in one module.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.multiple = model_stride(model)

    def forward(self, image: Tensor) -> Tensor:
        return whole_image(self.model, self.model.normalize(image), self.multiple)


def _window_starts(length: int, window: int, step: int) -> list[int]:
    """Return window offsets along one axis covering [0, length), the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, step))
    starts.append(length - window)
    return starts


def _sliding(model: nn.Module, x: Tensor, window: tuple[int, int], step: tuple[int, int], multiple: int) -> Tensor:
    """Return class probabilities [N, K, H, W] averaged over overlapping windows."""
    height, width = x.shape[-2:]
    total: Tensor | None = None
    count = torch.zeros(1, 1, height, width, device=x.device, dtype=x.dtype)
    for top in _window_starts(height, window[0], step[0]):
        for left in _window_starts(width, window[1], step[1]):
            crop = x[..., top : top + window[0], left : left + window[1]]
            probs = whole_image(model, crop, multiple).softmax(1)
            if total is None:
                total = x.new_zeros(x.shape[0], probs.shape[1], height, width)
            total[..., top : top + crop.shape[-2], left : left + crop.shape[-1]] += probs
            count[..., top : top + crop.shape[-2], left : left + crop.shape[-1]] += 1
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
    window_step: int | Sequence[int] | None = None,
) -> Tensor:
    """Return class probabilities float32 [N, K, H, W] at the input size of uint8 images [N, 3, H, W].

    Each scale resizes the normalized images (bilinear), runs whole-image inference (or, with
    `window` (an int or (h, w)), windows of that size every `window_step` pixels, default two thirds of
    the window, averaging the overlaps) and resizes the softmax back; with `flip` the mirrored images
    are added. The probabilities of all passes are averaged, so argmax gives the prediction. The
    model must be in eval mode; images go to the model's device.
    """
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4 or images_uint8.shape[1] != 3:
        raise ValueError(f"expected uint8 images [N, 3, H, W], got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive, got {list(scales)}")
    if window_step is not None and window is None:
        raise ValueError("a sliding-window step needs a window size")
    device = next(model.parameters()).device
    multiple = model_stride(model)
    x = model.normalize(images_uint8.to(device))
    height, width = x.shape[-2:]
    win = step = None
    if window is not None:
        win = _pair(window)
        step = _pair(window_step) if window_step is not None else (-(-2 * win[0] // 3), -(-2 * win[1] // 3))
        if min(win) < 1 or min(step) < 1 or step[0] > win[0] or step[1] > win[1]:
            raise ValueError(f"sliding window {win} with step {step}: both must be positive, step <= window")
    total: Tensor | None = None
    passes = 0
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = x if size == (height, width) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            inp = scaled.flip(-1) if mirrored else scaled
            if win is None:
                probs = whole_image(model, inp, multiple).float().softmax(1)
            else:
                probs = _sliding(model, inp, win, step, multiple).float()
            if mirrored:
                probs = probs.flip(-1)
            if probs.shape[-2:] != (height, width):
                probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
            passes += 1
    return total / passes


def predict_classes(
    model: nn.Module,
    images_uint8: Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | Sequence[int] | None = None,
    window_step: int | Sequence[int] | None = None,
) -> Tensor:
    """Return the class map int64 [N, H, W] of uint8 images [N, 3, H, W]: the argmax of `predict_logits`.

    With a single pass (scale 1, no flip, no window) the logits' argmax is taken directly, as training
    validation does: softmax does not change it, and skipping the softmax and its copies saves a third of
    the time after the forward pass. `max(1).indices` is the argmax (the first maximal class), several
    times faster than `argmax(1)` across the class dimension on CPU.
    """
    if tuple(scales) == (1.0,) and not flip and window is None:
        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4 or images_uint8.shape[1] != 3:
            raise ValueError(
                f"expected uint8 images [N, 3, H, W], got {images_uint8.dtype} {tuple(images_uint8.shape)}"
            )
        device = next(model.parameters()).device
        with torch.no_grad():
            logits = whole_image(model, model.normalize(images_uint8.to(device)), model_stride(model))
        return logits.max(1).indices
    return predict_logits(model, images_uint8, scales, flip, window, window_step).max(1).indices
