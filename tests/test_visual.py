"""Overlays: one colourization and one blend for TensorBoard panels, the report gallery and `seglab predict`."""

from __future__ import annotations

import numpy as np
import torch

from seglab import visual


def test_colourize_and_overlay_by_hand():
    palette = np.array([[0, 0, 0], [200, 100, 0]], dtype=np.uint8)
    label = np.array([[0, 1, 255]])
    assert visual.colourize(label, palette, 255).tolist() == [[[0, 0, 0], [200, 100, 0], [255, 255, 255]]]
    image = np.full((1, 3, 3), 100, dtype=np.uint8)
    blended = visual.overlay(image, label, palette, 255)
    a = visual.OVERLAY_ALPHA
    assert blended[0, 1].tolist() == [round((1 - a) * 100 + a * c) for c in (200, 100, 0)]
    assert blended[0, 2].tolist() == [round((1 - a) * 100 + a * 255)] * 3  # ignored pixels blend with white


def test_panel_is_image_label_and_prediction_side_by_side():
    palette = np.array([[0, 0, 0], [200, 100, 0]], dtype=np.uint8)
    image = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    label = torch.tensor([[0, 1, 255, 0, 1]] * 4, dtype=torch.uint8)
    pred = torch.ones(4, 5, dtype=torch.int64)
    out = visual.panel(image, label, pred, palette, 255)
    assert out.shape == (3, 4, 15) and out.dtype == torch.uint8
    photo = image.permute(1, 2, 0).numpy()
    assert torch.equal(out[:, :, :5], image)
    assert np.array_equal(out[:, :, 5:10].permute(1, 2, 0).numpy(), visual.overlay(photo, label.numpy(), palette, 255))
    assert np.array_equal(out[:, :, 10:].permute(1, 2, 0).numpy(), visual.overlay(photo, pred.numpy(), palette, 255))
