"""`seglab.load_model(RUN)`: a trained run, a checkpoint or an exported .onnx model as a Python callable that
takes RGB images as numpy arrays or PIL images and returns the class map and the class probabilities.

The model is loaded by `seglab.engine.checkpoint.load_run` (or `seglab.deployed.load_onnx`) and runs
through the one inference path, `seglab.engine.inference.predict_logits`: the run's normalization, the
padding to the basenet's stride and the test-time options are those of `seglab test` and `seglab predict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seglab.deployed import load_target
from seglab.engine.checkpoint import LoadedRun
from seglab.engine.inference import predict_logits


@dataclass
class Segmentation:
    """What a `Segmenter` returns: class indices int64 [H, W] and probabilities float32 [K, H, W] ([N, ...]
    for a batch)."""

    labels: np.ndarray
    probs: np.ndarray


class Segmenter:
    """A loaded model as a callable: `segmenter(image)` -> Segmentation.

    An image is a uint8 numpy array [H, W, 3] (RGB) or a PIL image (converted to RGB); a batch is a uint8
    array [N, H, W, 3]; a list of images (of any sizes) returns a list of results.
    """

    def __init__(
        self,
        loaded: LoadedRun,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        window: int | None = None,
        window_step: int | None = None,
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.classes = list(loaded.class_names)
        self.ignore_index = loaded.ignore_index
        self.scales, self.flip, self.window, self.window_step = tuple(scales), flip, window, window_step

    def __call__(self, image: np.ndarray | Image.Image | Sequence) -> Segmentation | list[Segmentation]:
        if isinstance(image, (list, tuple)):
            return [self(item) for item in image]
        array = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image
        if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
            raise TypeError(
                f"expected a uint8 numpy array or a PIL image, got {getattr(array, 'dtype', type(array).__name__)}"
            )
        if array.ndim not in (3, 4) or array.shape[-1] != 3:
            raise ValueError(f"expected an RGB image [H, W, 3] or a batch [N, H, W, 3], got shape {array.shape}")
        stacked = np.ascontiguousarray(array if array.ndim == 4 else array[None])
        if not stacked.flags.writeable:  # arrays of PIL images are read-only; torch wants writable memory
            stacked = stacked.copy()
        batch = torch.from_numpy(stacked).permute(0, 3, 1, 2)
        probs = predict_logits(
            self.model, batch, scales=self.scales, flip=self.flip, window=self.window, window_step=self.window_step
        )
        labels = probs.argmax(1).cpu().numpy()
        probs_np = probs.cpu().numpy()
        return Segmentation(labels, probs_np) if array.ndim == 4 else Segmentation(labels[0], probs_np[0])


def load_model(
    run: str | Path,
    device: str = "auto",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | None = None,
    window_step: int | None = None,
    ema: bool = True,
) -> Segmenter:
    """Return a `Segmenter` for a run folder (its last checkpoint), a checkpoint file or an exported .onnx model.

    `device` is a `--device` value (auto: a GPU when available); `scales`, `flip`, `window` and
    `window_step` are the test-time options of `seglab test` (`predict_logits`); `ema` loads a checkpoint's
    EMA weights where it has them, as `seglab test` evaluates them (False: the trained weights).
    """
    return Segmenter(load_target(run, device, ema), scales, flip, window, window_step)
