"""`seglab.deployed.OnnxModel`: an exported .onnx file through seglab's one inference path and evaluation
gives what the PyTorch model gives (whole image, flip, sliding window exactly; multi-scale up to the uint8
rounding of resized images), and exported models load with the metadata beside them, or are refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from deploy_fixtures import FE, photo_crops, randomize_decoder

from seglab import build_model
from seglab.config import TrainConfig
from seglab.data.base import build_dataset
from seglab.deployed import OnnxModel, is_onnx, load_onnx, load_target, read_metadata
from seglab.engine.evaluate import evaluate
from seglab.engine.inference import predict_logits
from seglab.errors import CheckpointError, ConfigError, PathError
from seglab.export import export_onnx, save_weights

NUM_CLASSES = 6  # the synthetic dataset's classes


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(PyTorch model with random decoder weights, its export folder with model.onnx and model.safetensors)."""
    torch.manual_seed(0)
    model = randomize_decoder(build_model(FE, "fcn8s", NUM_CLASSES))
    folder = tmp_path_factory.mktemp("export")
    export_onnx(model, folder / "model.onnx")
    config = TrainConfig(basenet=FE, decoder="fcn8s", dataset="synthetic", dataset_options={"length": 3, "size": 40})
    classes = ["background", "disk", "square", "triangle", "ring", "cross"]
    save_weights(model, folder / "model.safetensors", config, classes, ignore_index=255, step=7)
    return model, folder


def adapter(model, folder) -> OnnxModel:
    return OnnxModel(folder / "model.onnx", model.input_mean, model.input_std, NUM_CLASSES)


@pytest.mark.parametrize(
    "options",
    [{}, {"flip": True}, {"window": 24, "window_step": 16}],
    ids=["whole-image", "flip", "sliding-window"],
)
def test_inference_path_gives_the_pytorch_result(exported, options):
    model, folder = exported
    onnx_model = adapter(model, folder)
    for image in photo_crops():  # sizes that are no multiple of the stride: the graph pads them itself
        expected = predict_logits(model, image[None], **options)
        assert expected.argmax(1).unique().numel() > 1
        torch.testing.assert_close(predict_logits(onnx_model, image[None], **options), expected, atol=1e-5, rtol=0)


def test_multi_scale_differs_only_by_rounding_resized_images(exported):
    model, folder = exported
    image = photo_crops()[0][None]
    got = predict_logits(adapter(model, folder), image, scales=(0.75, 1.25))
    expected = predict_logits(model, image, scales=(0.75, 1.25))
    assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.99
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)


def test_normalization_round_trips_to_the_same_uint8_image(exported):
    model, folder = exported
    onnx_model = adapter(model, folder)
    images = torch.randint(0, 256, (2, 3, 17, 23), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(onnx_model.normalize(images), model.normalize(images), atol=0, rtol=0)
    assert torch.equal(onnx_model.to_uint8(onnx_model.normalize(images)), images)


def test_evaluate_runs_the_onnx_model_like_the_pytorch_one(exported):
    model, folder = exported
    dataset = build_dataset("synthetic", None, "val", length=3, size=40)
    onnx_result = evaluate(adapter(model, folder), dataset, gallery=1)
    torch_result = evaluate(model, dataset, gallery=1)
    assert torch.equal(onnx_result.per_image, torch_result.per_image)
    assert torch.equal(onnx_result.boundary, torch_result.boundary)


def test_load_from_the_safetensors_metadata_beside_it(exported):
    model, folder = exported
    loaded = load_target(folder / "model.onnx", "cpu")
    assert isinstance(loaded.model, OnnxModel) and loaded.model.precision == "fp32"
    assert loaded.config.dataset == "synthetic" and loaded.config.dataset_options == {"length": 3, "size": 40}
    assert (loaded.step, loaded.ignore_index, loaded.class_names[1]) == (7, 255, "disk")
    assert loaded.target.run is None and loaded.model.num_classes == NUM_CLASSES
    assert loaded.model.input_mean == tuple(model.input_mean)
    assert is_onnx(folder / "MODEL.ONNX") and not is_onnx(folder / "last.pt")


def test_export_json_must_name_the_file(exported, tmp_path):
    _, folder = exported
    shutil.copy(folder / "model.onnx", tmp_path / "other.onnx")
    (tmp_path / "export.json").write_text(json.dumps({"onnx": "model.onnx", "int8": {"onnx": "model_int8.onnx"}}))
    with pytest.raises(ConfigError, match=r"export\.json describes model\.onnx, model_int8\.onnx, not other\.onnx"):
        read_metadata(tmp_path / "other.onnx")
    (tmp_path / "export.json").write_text(json.dumps({"onnx": "other.onnx"}))
    with pytest.raises(CheckpointError, match=r"export metadata lacks config, num_classes"):
        load_onnx(tmp_path / "other.onnx")
    (tmp_path / "export.json").unlink()
    with pytest.raises(PathError, match=r"other\.onnx: neither export\.json nor model\.safetensors beside it"):
        load_onnx(tmp_path / "other.onnx")
