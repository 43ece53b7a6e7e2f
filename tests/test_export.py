"""`seglab export`: ONNX graphs with dynamic H/W match PyTorch and seglab's inference; safetensors round trip."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from deploy_fixtures import FE, photo_crops, randomize_decoder, train_tiny_run
from safetensors import safe_open

from seglab import build_model
from seglab.cli import main as seglab
from seglab.config import TrainConfig
from seglab.engine.inference import DeployModel, predict_logits
from seglab.errors import CheckpointError, ExportError
from seglab.export import (
    export_onnx,
    load_weights,
    onnx_session,
    save_weights,
    verify_onnx,
)

NUM_CLASSES = 5


@pytest.fixture(scope="module", params=["fcn8s", "lraspp"])
def exported(request, tmp_path_factory):
    """(model with random decoder weights, path of its ONNX export) for FCN-8s and LR-ASPP."""
    torch.manual_seed(0)
    model = randomize_decoder(build_model(FE, request.param, NUM_CLASSES))
    path = export_onnx(model, tmp_path_factory.mktemp(request.param) / "model.onnx")
    return model, path


def test_onnx_graph_contract(exported):
    _, path = exported
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    assert graph.opset_import[0].version == 18

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [i.name for i in graph.graph.input] == ["image"]
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims(graph.graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(graph.graph.output[0]) == ["batch", NUM_CLASSES, "height", "width"]


def test_onnxruntime_matches_pytorch_at_two_sizes(exported):
    model, path = exported
    session = onnx_session(path)
    photos = photo_crops()
    assert photos[0].shape != photos[1].shape
    batches = [photos[0][None], photos[1][None], torch.stack([photos[1], photos[1].flip(-1)])]
    for batch in batches:
        got = torch.from_numpy(session.run(["logits"], {"image": batch.numpy()})[0])
        with torch.no_grad():
            expected = DeployModel(model)(batch)
        assert got.shape == (batch.shape[0], NUM_CLASSES, *batch.shape[-2:])
        assert expected.abs().max() > 0.1  # the comparison is not between two maps of zeros
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        # The graph is seglab's own whole-image inference (normalize, pad to the stride, crop back).
        torch.testing.assert_close(got.softmax(1), predict_logits(model, batch), atol=1e-5, rtol=1e-4)


def test_verify_reports_differences_and_enforces_tolerance(exported):
    model, path = exported
    checks = verify_onnx(model, path, photo_crops(), atol=1e-4)
    assert [c["size"] for c in checks] == [(70, 90), (61, 77)]
    assert all(c["max_abs_diff"] <= 1e-4 and c["label_agreement"] == 1.0 for c in checks)
    changed = randomize_decoder(build_model(FE, model.decoder.name, NUM_CLASSES), seed=1)
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        next(reversed(list(changed.decoder.parameters()))).add_(0.5)
    with pytest.raises(ExportError, match=r"logits differ by 0\.5 \(> --atol 0\.001\) on an image of size \(70, 90\)"):
        verify_onnx(changed, path, photo_crops(), atol=1e-3)


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    model = randomize_decoder(build_model(FE, "fcn8s", NUM_CLASSES, trainable_upsampling=True))
    config = TrainConfig(basenet=FE, decoder="fcn8s", decoder_options={"trainable_upsampling": True})
    path = save_weights(model, tmp_path / "w.safetensors", config, list("abcde"))
    loaded = load_weights(path)
    original = model.state_dict()
    assert loaded.state_dict().keys() == original.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["class_names"]) == list("abcde")
    assert json.loads(meta["input_mean"]) == list(model.input_mean)
    image = photo_crops()[0][None]
    torch.testing.assert_close(predict_logits(loaded, image), predict_logits(model, image), atol=0, rtol=0)


def test_load_weights_without_metadata_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match=r"plain\.safetensors: safetensors metadata lacks basenet, decoder"):
        load_weights(tmp_path / "plain.safetensors")


def test_export_cli_on_a_run(tmp_path, capsys):
    run = train_tiny_run(tmp_path / "runs")
    images = []
    for i, photo in enumerate(photo_crops()):
        from PIL import Image

        images.append(tmp_path / f"photo{i}.png")
        Image.fromarray(photo.permute(1, 2, 0).numpy()).save(images[-1])
    capsys.readouterr()
    assert seglab(["export", str(run), "--format", "onnx", "--verify-images", *map(str, images)]) == 0
    out = capsys.readouterr().out
    assert "opset 18" in out
    assert out.count("max |ONNX - PyTorch| = ") == 2 and "verified on a 70x90 image" in out
    info = json.loads((run / "export" / "export.json").read_text())
    assert info["input"]["dtype"] == "uint8" and info["basenet"] == FE and info["decoder"] == "fcn8s"
    assert all(c["max_abs_diff"] <= 1e-3 for c in info["checks"])
    weights = load_weights(run / "export" / "model.safetensors")
    session = onnx_session(run / "export" / "model.onnx")
    batch = photo_crops()[1][None]
    got = session.run(["logits"], {"image": batch.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, DeployModel(weights)(batch).numpy(), atol=1e-4)


def test_export_cli_reports_a_missing_run(tmp_path, capsys):
    assert seglab(["export", str(tmp_path / "nowhere")]) == 1
    assert f"seglab export: error: {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
