"""`seglab.load_model`: the README's five-line example runs as written; numpy images, batches, PIL images and
lists give what seglab's inference gives, with the run's normalization, padding and test-time options; an
exported .onnx model loads the same way."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_fixtures import photo_crops, randomize_run, train_tiny_run
from PIL import Image

import seglab
from seglab.engine.checkpoint import load_run
from seglab.engine.inference import predict_logits
from seglab.export import export_onnx, save_weights

README = Path(__file__).parents[1] / "README.md"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return randomize_run(train_tiny_run(tmp_path_factory.mktemp("runs")))


def expected(run, array, **options):
    images = torch.from_numpy(np.array(array if array.ndim == 4 else array[None])).permute(0, 3, 1, 2)
    return predict_logits(load_run(run).model, images, **options)


def test_readme_example_runs(run, tmp_path):
    section = README.read_text().split("### In Python: `seglab.load_model`", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    assert len(code.strip().splitlines()) == 5
    photo = photo_crops()[0].permute(1, 2, 0).numpy()
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=95)
    code = code.replace('"runs/2026-11-25_resnet18_fcn8s__1"', repr(str(run))).replace(
        '"photo.jpg"', repr(str(tmp_path / "photo.jpg"))
    )
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    probs = expected(run, np.asarray(Image.open(tmp_path / "photo.jpg").convert("RGB")))[0]
    assert np.array_equal(result.labels, probs.argmax(0).numpy()) and len(np.unique(result.labels)) > 1
    np.testing.assert_allclose(result.probs, probs.numpy(), atol=1e-6)


def test_images_batches_pil_and_lists(run):
    model = seglab.load_model(run, device="cpu", scales=(0.75, 1.0), flip=True)
    assert model.classes[0] == "background" and model.ignore_index == 255
    first, second = (p.permute(1, 2, 0).numpy() for p in photo_crops())
    one = model(first)
    reference = expected(run, first, scales=(0.75, 1.0), flip=True)[0]
    assert one.labels.shape == first.shape[:2] and one.probs.shape == (6, *first.shape[:2])
    assert one.labels.dtype == np.int64 and one.probs.dtype == np.float32
    np.testing.assert_allclose(one.probs, reference.numpy(), atol=1e-6)
    batch = model(np.stack([first, first[:, ::-1]]))
    assert batch.labels.shape == (2, *first.shape[:2])
    np.testing.assert_allclose(batch.probs[0], one.probs, atol=1e-5)
    rgba = Image.fromarray(second).convert("RGBA")  # converted to RGB
    np.testing.assert_allclose(model(rgba).probs, model(second).probs, atol=0)
    listed = model([first, second])
    assert [r.labels.shape for r in listed] == [first.shape[:2], second.shape[:2]]
    with pytest.raises(TypeError, match="expected a uint8 numpy array or a PIL image, got float32"):
        model(first.astype(np.float32))
    with pytest.raises(ValueError, match=r"expected an RGB image \[H, W, 3\] or a batch \[N, H, W, 3\], got shape"):
        model(first[..., :2])


def test_an_exported_onnx_model_loads_the_same_way(run, tmp_path):
    loaded = load_run(run)
    path = export_onnx(loaded.model, tmp_path / "model.onnx")
    save_weights(loaded.model, tmp_path / "model.safetensors", loaded.config, loaded.class_names)
    photo = photo_crops()[1].permute(1, 2, 0).numpy()
    got = seglab.load_model(path, device="cpu")(photo)
    np.testing.assert_allclose(got.probs, seglab.load_model(run, device="cpu")(photo).probs, atol=1e-5)
