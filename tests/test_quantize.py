"""INT8 quantization (`seglab.quantize`): QDQ graphs with per-channel int8 weights and calibrated uint8
activations (the min-max range checked by hand), every calibration method honoured, the graph analysis that
names what stayed fp32, and the shape rewiring that lets BatchNormalization fold into its convolution."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from deploy_fixtures import FE, photo_crops, randomize_decoder
from onnx import TensorProto, helper, numpy_helper

from seglab import build_model
from seglab.config import CALIBRATION_METHODS
from seglab.deployed import OnnxModel
from seglab.engine.inference import predict_logits
from seglab.errors import ConfigError
from seglab.export import export_onnx
from seglab.quantize import (
    calibration_indices,
    float_nodes,
    graph_report,
    nodes_text,
    op_counts_text,
    quantize_onnx,
    read_shapes_downstream,
)

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """(model with random decoder weights, its fp32 ONNX export, calibration images of three sizes)."""
    torch.manual_seed(0)
    model = randomize_decoder(build_model(FE, "fcn8s", NUM_CLASSES))
    path = export_onnx(model, tmp_path_factory.mktemp("fp32") / "model.onnx")
    noise = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return model, path, [*photo_crops(), noise]


@pytest.fixture(scope="module")
def quantized(fp32, tmp_path_factory):
    """{method: path of the INT8 model} for every calibration method, and how often each image was loaded."""
    _, path, images = fp32
    out, loads = {}, {}
    for method in CALIBRATION_METHODS:
        loads[method] = []

        def load(i, seen=loads[method]):
            seen.append(i)
            return images[i]

        folder = tmp_path_factory.mktemp(method)
        out[method] = quantize_onnx(path, folder / "model_int8.onnx", load, len(images), method)
    return out, loads


def initializers(graph) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def activation_scales(path) -> dict[str, float]:
    """Scale of every per-tensor QuantizeLinear, by the tensor it quantizes."""
    graph = onnx.load(str(path)).graph
    values = initializers(graph)
    return {
        n.input[0]: float(values[n.input[1]])
        for n in graph.node
        if n.op_type == "QuantizeLinear" and n.input[1] in values and values[n.input[1]].size == 1
    }


def test_qdq_graph_has_per_channel_int8_weights_and_uint8_activations(fp32, quantized):
    _, path, _ = fp32
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
    graph = onnx.load(str(quantized[0]["minmax"])).graph
    values = initializers(graph)
    producer = {out: n for n in graph.node for out in n.output}
    checked = 0
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        weight = producer[node.input[1]]
        assert weight.op_type == "DequantizeLinear"
        q_weight, scale = values[weight.input[0]], values[weight.input[1]]
        assert q_weight.dtype == np.int8 and scale.shape == (q_weight.shape[0],)  # one scale per output channel
        assert [a.i for a in weight.attribute if a.name == "axis"] in ([0], [])  # axis 0 is the default
        activation = producer[node.input[0]]
        assert activation.op_type == "DequantizeLinear" and values[activation.input[2]].dtype == np.uint8
        checked += 1
    assert checked == convs > 10


def test_minmax_calibration_range_by_hand(fp32, quantized):
    """The normalized input's uint8 scale is (max - min) / 255 over the calibration images (0 included)."""
    model, _, images = fp32
    normalized = [model.normalize(image[None]) for image in images]
    low = min(0.0, min(float(x.min()) for x in normalized))
    high = max(0.0, max(float(x.max()) for x in normalized))
    graph = onnx.load(str(quantized[0]["minmax"])).graph
    producer = {out: n for n in graph.node for out in n.output}
    first = next(n for n in graph.node if n.op_type == "QuantizeLinear" and producer[n.input[0]].op_type == "Div")
    assert activation_scales(quantized[0]["minmax"])[first.input[0]] == pytest.approx((high - low) / 255, rel=1e-6)


def test_every_calibration_method_is_honoured(quantized):
    paths, loads = quantized
    minmax = activation_scales(paths["minmax"])
    for method in ("entropy", "percentile"):
        scales = activation_scales(paths[method])
        assert scales.keys() == minmax.keys()
        ratios = [scales[name] / minmax[name] for name in minmax]
        # Both clip outliers, so no range exceeds min-max's, and some are narrower.
        assert max(ratios) <= 1 + 1e-6 and min(ratios) < 0.99, method
    # One image per collection step, each calibration image loaded exactly once.
    assert all(sorted(seen) == [0, 1, 2] for seen in loads.values())


def test_int8_model_agrees_with_fp32(fp32, quantized):
    model, path, images = fp32
    reference = OnnxModel(path, model.input_mean, model.input_std, NUM_CLASSES)
    for method, int8_path in quantized[0].items():
        int8 = OnnxModel(int8_path, model.input_mean, model.input_std, NUM_CLASSES)
        assert int8.precision == "int8" and reference.precision == "fp32"
        for image in images:
            same = predict_logits(int8, image[None]).argmax(1) == predict_logits(reference, image[None]).argmax(1)
            assert same.float().mean() > 0.75, method


def test_graph_report_of_a_quantized_model(fp32, quantized):
    _, path, _ = fp32
    report = graph_report(quantized[0]["minmax"])
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
    assert report["quantized"]["Conv"] == convs and report["runtime_int8"]["QLinearConv"] == convs
    # Only the input normalization (Cast of the uint8 image, then arithmetic) is left out by the quantizer.
    assert {n["op"] for n in report["fp32"]} == {"Cast", "Sub", "Div"}
    assert {n["op"] for n in report["fp32"]} <= {n["op"] for n in report["runtime_fp32"]}
    assert all(n["name"] for n in report["runtime_fp32"])


def qdq_graph():
    """uint8 image -> Cast -> Mul (normalize) -> Q/DQ -> Conv (DQ weights) -> Q/DQ -> Resize -> output, with
    shape arithmetic (Shape -> Cast -> Mul) on the side."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], name="cast", to=f),
        helper.make_node("Mul", ["x", "c"], ["xn"], name="normalize"),
        helper.make_node("QuantizeLinear", ["xn", "s", "z"], ["xq"], name="q0"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq0"),
        helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], name="dqw"),
        helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv"),
        helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"], name="q1"),
        helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["yd"], name="dq1"),
        helper.make_node("Shape", ["yd"], ["shape"], name="shape"),
        helper.make_node("Cast", ["shape"], ["shape_f"], name="shape_cast", to=f),
        helper.make_node("Mul", ["shape_f", "c"], ["size"], name="shape_arith"),
        helper.make_node("Resize", ["yd", "", "two"], ["out"], name="resize"),
    ]
    inits = [
        numpy_helper.from_array(np.array(1 / 255, np.float32), "c"),
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.uint8), "z"),
        numpy_helper.from_array(np.ones((2, 3, 1, 1), np.int8), "wq"),
        numpy_helper.from_array(np.full(2, 0.5, np.float32), "ws"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "two"),
    ]
    return helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("out", f, None), helper.make_tensor_value_info("size", f, None)],
        inits,
    )


def test_float_nodes_classify_a_hand_built_graph():
    fp32, quantized = float_nodes(qdq_graph(), qdq_units_are_int8=True)
    # Conv sits between DequantizeLinear and QuantizeLinear; Resize's output is not quantized; the shape
    # arithmetic computes on sizes, not on the image, and is not listed.
    assert [(n["name"], n["op"]) for n in fp32] == [("cast", "Cast"), ("normalize", "Mul"), ("resize", "Resize")]
    assert quantized == {"Conv": 1}
    fp32, quantized = float_nodes(qdq_graph(), qdq_units_are_int8=False)  # after ONNX Runtime's fusions
    assert [n["name"] for n in fp32] == ["cast", "normalize", "conv", "resize"] and not quantized
    graph = qdq_graph()
    conv = next(n for n in graph.node if n.name == "conv")
    conv.op_type = "QLinearConv"  # what ONNX Runtime fuses the unit into
    assert float_nodes(graph, qdq_units_are_int8=False)[1] == {"QLinearConv": 1}


def test_shapes_move_past_batchnorm_and_activation():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Shape", ["c"], ["early"], name="shape_early"),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Shape", ["c"], ["late"], name="shape_late"),
        helper.make_node("Shape", ["x"], ["other"], name="shape_other"),
    ]
    graph = helper.make_graph(nodes, "g", [], [])
    assert read_shapes_downstream(graph) == 1
    by_name = {n.name: n for n in graph.node}
    assert by_name["shape_late"].input[0] == "r"  # the end of the chain
    assert by_name["shape_early"].input[0] == "c"  # moving it would break the topological order
    assert by_name["shape_other"].input[0] == "x"


def test_calibration_indices_are_distinct_seeded_and_capped():
    first = calibration_indices(50, 10)
    assert first == sorted(set(first)) and len(first) == 10 and first == calibration_indices(50, 10)
    assert first != calibration_indices(50, 10, seed=1)
    assert calibration_indices(4, 100) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="holds no images"):
        calibration_indices(0, 3)


def test_texts():
    assert op_counts_text({"Conv": 17, "MaxPool": 1}) == "Conv x17, MaxPool"
    nodes = [{"op": "Resize", "name": f"r{i}"} for i in range(5)] + [{"op": "Pad", "name": "p"}]
    assert nodes_text(nodes) == "Resize x5 (r0, r1, r2, +2 more), Pad (p)"
    assert nodes_text([]) == "none"
