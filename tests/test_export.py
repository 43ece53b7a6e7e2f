"""`seglab export`: ONNX graphs with dynamic H/W match PyTorch and seglab's inference; safetensors round trip;
`--int8` writes a quantized model whose measured accuracy cost `seglab test` and `seglab compare` reproduce."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import onnx
import pytest
import torch
from deploy_fixtures import FE, photo_crops, randomize_decoder, randomize_run, train_tiny_run
from PIL import Image
from safetensors import safe_open

from seglab import build_model, metrics
from seglab.cli import main as seglab
from seglab.config import TrainConfig
from seglab.data.base import build_dataset
from seglab.engine.inference import DeployModel, predict_logits
from seglab.errors import CheckpointError, ExportError
from seglab.export import (
    export_onnx,
    load_weights,
    onnx_session,
    save_weights,
    verify_onnx,
)
from seglab.runs import COUNTS, EvalDir

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


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    """A tiny run with random decoder weights, exported with --int8; (run folder, what the export printed)."""
    root = tmp_path_factory.mktemp("int8")
    run = randomize_run(train_tiny_run(root / "runs"))
    photos = []
    for i, photo in enumerate(photo_crops()):
        photos.append(root / f"photo{i}.png")
        Image.fromarray(photo.permute(1, 2, 0).numpy()).save(photos[-1])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        argv = ["export", str(run), "--int8", "--calibrate", "3", "--verify-limit", "3", "--verify-images"]
        assert seglab([*argv, *map(str, photos)]) == 0
    return run, printed.getvalue()


def test_int8_export_measures_its_accuracy_cost(int8_run):
    run, printed = int8_run
    info = json.loads((run / "export" / "export.json").read_text())
    int8 = info["int8"]
    assert int8["onnx"] == "model_int8.onnx" and (run / "export" / "model_int8.onnx").is_file()
    calibration = int8["calibration"]
    assert (calibration["method"], calibration["images"], calibration["split"]) == ("minmax", 3, "train")
    assert len(set(calibration["indices"])) == 3
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(run / "export" / "model.onnx")).graph.node)
    assert int8["graph"]["quantized"]["Conv"] == convs
    assert {n["op"] for n in int8["graph"]["fp32"]} == {"Cast", "Sub", "Div"}  # the input normalization
    check = int8["verification"]
    assert (check["images"], check["dataset"], check["split"]) == (3, "synthetic", "val")  # capped at 3 of 4
    # Recomputed from the two files with ONNX Runtime directly.
    dataset = build_dataset("synthetic", None, "val", length=4, size=32)
    sessions = {p: onnx_session(run / "export" / f"{p}.onnx") for p in ("model", "model_int8")}
    preds, cms = {p: [] for p in sessions}, {p: [] for p in sessions}
    for i in range(3):
        image, label = dataset.load(i)
        for name, session in sessions.items():
            pred = torch.from_numpy(session.run(["logits"], {"image": image[None].numpy()})[0]).argmax(1)
            preds[name].append(pred)
            cms[name].append(metrics.confusion_matrix(pred, label[None], 6, 255))
    agreement = float(torch.cat(preds["model"]).eq(torch.cat(preds["model_int8"])).double().mean())
    assert 0.5 < check["agreement"] == pytest.approx(agreement, abs=1e-12)
    fp32_miou, int8_miou = (float(metrics.mean_iou(torch.stack(cms[p]).sum(0))) for p in sessions)
    assert check["miou_fp32"] == pytest.approx(fp32_miou, abs=1e-12)
    assert check["miou_int8"] == pytest.approx(int8_miou, abs=1e-12)
    assert check["miou_diff"]["diff"] == pytest.approx(int8_miou - fp32_miou, abs=1e-12)
    assert f"wrote {run / 'export' / 'model_int8.onnx'} (INT8, QDQ: int8 weights per channel" in printed
    assert "calibrated (minmax) on 3 synthetic train images" in printed
    assert f"on 3 synthetic val images: argmax agreement with fp32 {100 * check['agreement']:.2f}%" in printed
    assert "stayed fp32: Cast (node_" in printed and "ONNX Runtime (CPU) runs QLinear" in printed


def test_seglab_test_evaluates_both_exported_models_and_compare_pairs_them(int8_run, tmp_path):
    run, _ = int8_run
    check = json.loads((run / "export" / "export.json").read_text())["int8"]["verification"]
    quick = ["--limit", "3", "--workers", "0", "--bootstrap", "50"]
    for target in (run, run / "export" / "model.onnx", run / "export" / "model_int8.onnx"):
        assert seglab(["test", str(target), *quick]) == 0
    evaluations = {name: EvalDir(run / "eval" / name) for name in ("val", "val-onnx-fp32", "val-onnx-int8")}
    summaries = {name: e.read_summary() for name, e in evaluations.items()}
    assert all((e.path / "report.html").is_file() for e in evaluations.values())
    # fp32 ONNX predicts what PyTorch predicts, pixel for pixel; both match what the export measured.
    cms = {name: e.read_arrays()[COUNTS] for name, e in evaluations.items()}
    assert np.array_equal(cms["val-onnx-fp32"], cms["val"])
    assert summaries["val-onnx-fp32"]["miou"] == pytest.approx(check["miou_fp32"], abs=1e-12)
    assert summaries["val-onnx-int8"]["miou"] == pytest.approx(check["miou_int8"], abs=1e-12)
    model = summaries["val-onnx-int8"]["model"]
    assert (model["format"], model["precision"], model["basenet"]) == ("onnx", "int8", FE)
    assert model["params"] == summaries["val"]["model"]["params"]
    out = tmp_path / "compare"
    assert seglab(["compare", str(run), str(evaluations["val-onnx-int8"].path), "--out", str(out)]) == 0
    test = json.loads((out / "compare.json").read_text())["paired_bootstrap"][0]
    assert test["diff"] == pytest.approx(summaries["val-onnx-int8"]["miou"] - summaries["val"]["miou"], abs=1e-12)


def test_bench_times_int8_and_shows_the_exported_miou_change(int8_run, tmp_path, capsys):
    run, _ = int8_run
    diff = json.loads((run / "export" / "export.json").read_text())["int8"]["verification"]["miou_diff"]
    argv = ["bench", str(run), "--backends", "onnxruntime,onnxruntime-int8", "--size", "32", "--warmup", "0"]
    assert seglab([*argv, "--repeats", "1", "--threads", "1", "--md", str(tmp_path / "b.md")]) == 0
    md = (tmp_path / "b.md").read_text()
    assert "| onnxruntime ms | onnxruntime-int8 ms | INT8 - fp32 mIoU, points (95% CI) |" in md
    low, high = diff["ci"]
    assert f"| {100 * diff['diff']:+.2f} ({100 * low:+.2f} to {100 * high:+.2f}), 3 synthetic val images |" in md
    assert "onnxruntime-int8: the INT8 QDQ model of `seglab export --int8`" in md
    capsys.readouterr()


def test_exported_models_refuse_checkpoint_choices(int8_run, capsys):
    run, _ = int8_run
    assert seglab(["test", str(run / "export" / "model_int8.onnx"), "--last-k", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("model_int8.onnx is an exported model: --checkpoints and --last-k choose checkpoints of a run")
