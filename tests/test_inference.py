"""Inference: exact padding and crop-back, sliding windows, multi-scale and flip averaging."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from eval_fixtures import Stride
from torch import nn

from seglab.engine.inference import predict_logits


class Pointwise(nn.Module):
    """A 1x1 convolution (so whole-image, padded and windowed inference must agree) that records input sizes."""

    def __init__(self, output_stride: int = 32, num_classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.basenet = Stride(output_stride)
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.shapes: list[tuple[int, int]] = []

    def normalize(self, images):
        return (images.float() / 255.0 - 0.5) / 0.25

    def forward(self, x):
        stride = self.basenet.output_stride
        assert x.shape[-2] % stride == 0 and x.shape[-1] % stride == 0, tuple(x.shape)
        self.shapes.append(tuple(x.shape[-2:]))
        return self.conv(x)


class ColumnRamp(nn.Module):
    """Logit of class 0 grows with the column index, class 1 is 0: not mirror-symmetric."""

    def __init__(self) -> None:
        super().__init__()
        self.basenet = Stride(32)
        self.weight = nn.Parameter(torch.tensor(0.1))

    def normalize(self, images):
        return images.float()

    def forward(self, x):
        cols = torch.arange(x.shape[-1], dtype=x.dtype).expand(x.shape[0], 1, x.shape[-2], -1)
        return torch.cat([self.weight * cols, torch.zeros_like(cols)], dim=1)


def _images(n=2, h=50, w=70, seed=0):
    return torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _direct(model, images):
    return model.conv(model.normalize(images)).softmax(1)


@pytest.mark.parametrize("stride", [8, 32])
def test_whole_image_pads_to_the_stride_and_crops_back_exactly(stride):
    model = Pointwise(stride).eval()
    images = _images()
    probs = predict_logits(model, images)
    padded = (-(-50 // stride) * stride, -(-70 // stride) * stride)
    assert model.shapes == [padded]
    assert probs.shape == (2, 4, 50, 70) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, _direct(model, images), atol=1e-6, rtol=0)


def test_sliding_window_covers_the_image_and_matches_whole_image():
    model = Pointwise(32).eval()
    images = _images(1, 100, 150)
    probs = predict_logits(model, images, window=64, window_step=40)
    # rows start at 0, 36; columns at 0, 40, 80, 86 (the last window flush with the edge)
    assert model.shapes == [(64, 64)] * 8
    torch.testing.assert_close(probs, _direct(model, images), atol=1e-6, rtol=0)
    model.shapes.clear()
    small = _images(1, 40, 50)
    torch.testing.assert_close(predict_logits(model, small, window=64), _direct(model, small), atol=1e-6, rtol=0)
    assert model.shapes == [(64, 64)]


def test_flip_averages_the_mirrored_prediction():
    model = ColumnRamp().eval()
    images = _images(1, 32, 64)
    probs = predict_logits(model, images, flip=True)
    cols = torch.arange(64, dtype=torch.float32)
    expected = (torch.sigmoid(0.1 * cols) + torch.sigmoid(0.1 * (63 - cols))) / 2
    torch.testing.assert_close(probs[0, 0], expected.expand(32, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(predict_logits(model, images)[0, 0], torch.sigmoid(0.1 * cols).expand(32, -1))


def test_multi_scale_averages_probabilities_resized_back():
    model = Pointwise(32).eval()
    images = _images(1, 48, 64)
    probs = predict_logits(model, images, scales=(0.5, 1.0, 1.5))
    x = model.normalize(images)
    expected = 0
    for scale in (0.5, 1.0, 1.5):
        scaled = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        p = model.conv(scaled).softmax(1)
        expected = expected + F.interpolate(p, size=(48, 64), mode="bilinear", align_corners=False) / 3
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)
    # a flat image looks the same at every scale: multi-scale equals single scale
    flat = torch.full((1, 3, 48, 64), 77, dtype=torch.uint8)
    torch.testing.assert_close(
        predict_logits(model, flat, scales=(0.5, 1.0, 1.75), flip=True), predict_logits(model, flat), atol=1e-6, rtol=0
    )


def test_bad_arguments_are_rejected():
    model = Pointwise().eval()
    with pytest.raises(ValueError, match="expected uint8 images"):
        predict_logits(model, torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="step needs a window"):
        predict_logits(model, _images(), window_step=16)
    with pytest.raises(ValueError, match="step <= window"):
        predict_logits(model, _images(), window=32, window_step=64)
    with pytest.raises(ValueError, match="scales must be positive"):
        predict_logits(model, _images(), scales=(0.0,))
