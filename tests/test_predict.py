"""`seglab predict`: input expansion, palette label PNGs, overlays and probabilities equal to seglab's inference."""

from __future__ import annotations

import numpy as np
import pytest
from deploy_fixtures import photo_crops, randomize_run, train_tiny_run
from PIL import Image

from seglab.cli import main as seglab
from seglab.data.base import voc_palette
from seglab.data.io import read_image
from seglab.engine.checkpoint import load_run
from seglab.engine.inference import predict_logits
from seglab.errors import BadSampleError, ConfigError, PathError
from seglab.predict import collect_images
from seglab.visual import overlay


def read_rgb(path):
    return read_image(path, formats=None, exif=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder with two real photo crops (PNG and JPEG) and a text file that is not an image."""
    folder = tmp_path_factory.mktemp("photos")
    a, b = photo_crops()
    Image.fromarray(a.permute(1, 2, 0).numpy()).save(folder / "astronaut.png")
    Image.fromarray(b.permute(1, 2, 0).numpy()).save(folder / "chelsea.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_collect_images_expands_files_folders_and_globs(photos, tmp_path):
    png, jpg = photos / "astronaut.png", photos / "chelsea.jpg"
    assert collect_images([photos]) == [png.resolve(), jpg.resolve()]
    assert collect_images([str(photos / "*.jpg"), png, jpg]) == [jpg.resolve(), png.resolve()]
    with pytest.raises(PathError, match=r"missing\.png: no such file or folder"):
        collect_images([photos / "missing.png"])
    with pytest.raises(PathError, match=r"\*\.bmp: the pattern matches no files"):
        collect_images([str(photos / "*.bmp")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PathError, match="empty: folder holds no images"):
        collect_images([tmp_path / "empty"])
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "astronaut.png")
    with pytest.raises(ConfigError, match="have the same name 'astronaut'"):
        collect_images([photos, tmp_path / "astronaut.png"])


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(BadSampleError, match=r"broken\.jpg: unreadable image: not an image file"):
        read_rgb(bad)


def test_predict_cli_writes_what_inference_computes(photos, tmp_path, capsys):
    run = randomize_run(train_tiny_run(tmp_path / "runs"))
    out = tmp_path / "pred"
    assert (
        seglab(
            ["predict", str(run), str(photos), "--out", str(out), "--flip", "--scales", "0.75,1", "--save-probs", "npy"]
        )
        == 0
    )
    assert "of 2 images" in capsys.readouterr().out
    model = load_run(run).model
    palette = voc_palette(6)  # the synthetic dataset's palette
    for name, suffix in (("astronaut", ".png"), ("chelsea", ".jpg")):
        image = read_rgb(photos / f"{name}{suffix}")
        expected = predict_logits(model, image[None], scales=(0.75, 1.0), flip=True)[0]
        label_png = Image.open(out / "labels" / f"{name}.png")
        assert label_png.mode == "P"
        assert np.array_equal(np.array(label_png.getpalette()[: 3 * 6]).reshape(6, 3), palette)
        label = np.array(label_png)
        assert np.array_equal(label, expected.argmax(0).numpy())
        assert len(np.unique(label)) > 1
        probs = np.load(out / "probs" / f"{name}.npy")
        assert probs.dtype == np.float16 and probs.shape == tuple(expected.shape)
        np.testing.assert_allclose(probs.astype(np.float32), expected.numpy(), atol=1e-3)
        blended = np.array(Image.open(out / "overlays" / f"{name}.png"))
        assert np.array_equal(blended, overlay(image.permute(1, 2, 0).numpy(), label, palette, 255))


def test_predict_cli_reports_a_missing_image(tmp_path, capsys):
    code = seglab(["predict", str(tmp_path / "run"), str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")])
    assert code == 1
    assert capsys.readouterr().err.strip().endswith("missing.png: no such file or folder")
