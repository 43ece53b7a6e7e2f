"""INT8 post-training quantization of an exported ONNX model with ONNX Runtime, and its measured cost.

`quantize_onnx` writes a statically quantized copy of the fp32 graph: QDQ format (QuantizeLinear /
DequantizeLinear pairs around each quantized operator, which ONNX Runtime fuses into integer kernels),
int8 weights quantized per output channel (symmetric), uint8 activations whose ranges are calibrated
on real images (`minmax`, `entropy` or `percentile`). The choices, and why:

- **uint8 activations, int8 weights** (ONNX Runtime's recommendation for x86 CPUs; ARM runs them too):
  activations after ReLU are non-negative, and an asymmetric uint8 range spends no code on them.
  `reduce_range` (7-bit weights) is for x86 CPUs without VNNI, whose 8-bit multiply-adds can saturate.
- **Pre-processing** (`onnxruntime.quantization.shape_inference.quant_pre_process`): ONNX shape
  inference types every tensor (a tensor of unknown type cannot be quantized) and ONNX Runtime's basic
  graph optimizations fold constants and fuse what they can. Its symbolic shape inference is skipped:
  it cannot follow the graph's data-dependent padding to the stride (height and width are dynamic).
  Before it, `read_shapes_downstream` moves Shape nodes that keep a BatchNormalization from folding
  into its convolution.
- **Calibration at the images' own sizes, one image at a time**: the graph has dynamic height and width,
  and calibrating at the sizes deployment sees keeps the ranges honest; ONNX Runtime's histogram
  calibrators stack the tensors of one collection step into one array, so a step holds one image
  (which also bounds memory to one image's activations).
- The graph's input normalization (Cast of the uint8 input, subtraction and division) stays fp32: the
  first QuantizeLinear follows it.

`graph_report` says what was quantized and what stayed in fp32, by node name, in the QDQ graph and in
the graph ONNX Runtime runs after its fusions; `compare_on_split` measures argmax agreement and mIoU of
the fp32 and INT8 models on a dataset split, with a paired bootstrap CI of the mIoU difference.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from seglab import metrics
from seglab.config import CALIBRATION_METHODS
from seglab.data.base import SegmentationDataset
from seglab.deployed import INPUT_NAME, OnnxModel
from seglab.engine.inference import predict_logits
from seglab.errors import ConfigError, ExportError
from seglab.plugins import optional_import
from seglab.runs import temp_path

# Ops whose outputs hold integers even when a float flows in (shape arithmetic, not computation).
SHAPE_OPS = frozenset({"Shape", "Size"})
# Ops whose output has their first input's shape (see `read_shapes_downstream`).
SHAPE_PRESERVING = frozenset({"BatchNormalization", "Relu", "Clip"})
# Integer kernels ONNX Runtime fuses QDQ node units into (QLinearConv, QLinearAdd, ... and these).
INTEGER_OPS = frozenset({"QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantizeLinear"})


class CalibrationImages:
    """ONNX Runtime's CalibrationDataReader: `get_next` feeds `load(i)`, a uint8 image [3, H, W] (or a batch).

    `set_range` and `__len__` let quantize_static collect statistics one image per step.
    """

    def __init__(self, load: Callable[[int], Tensor], count: int) -> None:
        self.load, self.count = load, count
        self.bar = tqdm(total=count, desc="calibrate", unit="img", disable=not sys.stderr.isatty())
        self.set_range(0, count)

    def __len__(self) -> int:
        return self.count

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending = iter(range(start_index, min(end_index, self.count)))

    def get_next(self) -> dict | None:
        index = next(self.pending, None)
        if index is None:
            return None
        self.bar.update(1)
        images = self.load(index)
        return {INPUT_NAME: (images if images.dim() == 4 else images[None]).numpy()}


def calibration_indices(length: int, count: int, seed: int = 0) -> list[int]:
    """Return `count` distinct indices of a `length`-image split, drawn at random from `seed` (sorted)."""
    if length < 1:
        raise ConfigError("the calibration split holds no images")
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(length, generator=generator)[: min(count, length)].tolist())


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    load: Callable[[int], Tensor],
    count: int,
    method: str = "minmax",
    reduce_range: bool = False,
) -> Path:
    """Write the INT8 QDQ model of `fp32_path` to `out_path` (atomically), calibrated on images `load(0..count-1)`.

    `load(i)` returns a uint8 image [3, H, W]; sizes may differ between images.
    """
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration {method!r}: choose from {', '.join(CALIBRATION_METHODS)}")
    onnx = optional_import("onnx", "onnx", "INT8 quantization")
    quantization = optional_import("onnxruntime.quantization", "onnx", "INT8 quantization")
    shape_inference = optional_import("onnxruntime.quantization.shape_inference", "onnx", "INT8 quantization")
    methods = {
        "minmax": quantization.CalibrationMethod.MinMax,
        "entropy": quantization.CalibrationMethod.Entropy,
        "percentile": quantization.CalibrationMethod.Percentile,
    }
    out_path = Path(out_path)
    temp = temp_path(out_path)
    reader = CalibrationImages(load, count)
    try:
        with tempfile.TemporaryDirectory(prefix="seglab-int8-") as workdir:
            rewired, prepared = Path(workdir) / "rewired.onnx", Path(workdir) / "prepared.onnx"
            model = onnx.load(str(fp32_path))
            read_shapes_downstream(model.graph)
            onnx.save(model, str(rewired))
            shape_inference.quant_pre_process(str(rewired), str(prepared), skip_symbolic_shape=True)
            # The histogram calibrators print progress for every step; the bar counts images instead.
            with contextlib.redirect_stdout(io.StringIO()):
                quantization.quantize_static(
                    str(prepared),
                    str(temp),
                    reader,
                    quant_format=quantization.QuantFormat.QDQ,
                    per_channel=True,
                    reduce_range=reduce_range,
                    activation_type=quantization.QuantType.QUInt8,
                    weight_type=quantization.QuantType.QInt8,
                    calibrate_method=methods[method],
                    extra_options={"CalibStridedMinMax": 1},  # one image per collection step (module docstring)
                )
        os.replace(temp, out_path)
    finally:
        reader.bar.close()
        temp.unlink(missing_ok=True)
    return out_path


def read_shapes_downstream(graph) -> int:
    """Make each Shape node read the end of the shape-preserving chain (BatchNormalization, Relu, Clip) after
    the tensor it reads; return how many moved.

    torch.export takes a tensor's size wherever it first appears, often at a convolution's output that
    an inference-mode BatchNormalization and an activation follow (EfficientNet's "same" padding reads
    it). That second reader keeps ONNX Runtime from folding the BatchNormalization into the convolution
    and the quantizer from merging the activation into it: both would stay fp32 operators between
    quantized ones. The shape is the same at the end of the chain.
    """
    after = {node.input[0]: node.output[0] for node in graph.node if node.op_type in SHAPE_PRESERVING}
    produced_at = {out: i for i, node in enumerate(graph.node) for out in node.output}
    moved = 0
    for i, node in enumerate(graph.node):
        start = node.input[0] if node.op_type == "Shape" else None
        # Only to tensors produced before the Shape node, so that the nodes stay in topological order.
        while node.op_type == "Shape" and produced_at.get(after.get(node.input[0]), i) < i:
            node.input[0] = after[node.input[0]]
        moved += start is not None and node.input[0] != start
    return moved


def float_nodes(graph, qdq_units_are_int8: bool) -> tuple[list[dict], Counter]:
    """Return (nodes computing on fp32 image data as [{name, op}], op-type counts of quantized nodes) of a graph.

    Image data flows from the graph input through every node that reads it, except shape ops (Shape,
    Size): what is computed from sizes (e.g. the padding to the stride) is arithmetic on a few scalars,
    not data, and is left out. Data is fp32 after a Cast to float or a DequantizeLinear, and stays fp32
    through every node that computes on it. With `qdq_units_are_int8` (the QDQ graph the quantizer
    writes), a node whose fp32 inputs all come from DequantizeLinear and whose outputs all go to
    QuantizeLinear counts as quantized; in the graph ONNX Runtime runs (after fusing such units into
    integer kernels) every node left on fp32 data runs in fp32.
    """
    onnx = optional_import("onnx", "onnx", "inspecting an ONNX graph")
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    data = {v.name for v in graph.input}
    floats = {v.name for v in graph.input if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    fp32, quantized = [], Counter()
    for node in graph.node:
        if node.op_type in SHAPE_OPS or not any(name in data for name in node.input):
            continue
        data.update(node.output)
        if node.op_type == "DequantizeLinear":
            floats.update(node.output)
            continue
        if node.op_type == "QuantizeLinear" or node.op_type in INTEGER_OPS or node.op_type.startswith("QLinear"):
            if node.op_type != "QuantizeLinear":
                quantized[node.op_type] += 1
            continue
        to_float = node.op_type == "Cast" and any(
            a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute
        )
        inputs = [name for name in node.input if name in floats]
        if not inputs and not to_float:
            continue  # integer data moving through (e.g. MaxPool or Slice on uint8)
        floats.update(node.output)
        from_dq = all(
            producer.get(name) is not None and producer[name].op_type == "DequantizeLinear" for name in inputs
        )
        to_q = all(
            consumers.get(out) and all(c.op_type == "QuantizeLinear" for c in consumers[out]) for out in node.output
        )
        if qdq_units_are_int8 and inputs and from_dq and to_q:
            quantized[node.op_type] += 1
        else:
            fp32.append({"name": node.name, "op": node.op_type})
    return fp32, quantized


def runtime_graph(path: str | Path, workdir: str | Path):
    """Return the graph ONNX Runtime's CPU provider runs for `path`, after its QDQ fusions (extended level)."""
    ort = optional_import("onnxruntime", "onnx", "inspecting an ONNX graph")
    onnx = optional_import("onnx", "onnx", "inspecting an ONNX graph")
    options = ort.SessionOptions()
    # Extended, not all: the highest level adds layout changes specific to this machine's CPU.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(Path(workdir) / "runtime.onnx")
    ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath).graph


def graph_report(path: str | Path) -> dict:
    """Return what an INT8 QDQ model quantized and what stayed fp32, in its own graph and as ONNX Runtime runs it.

    Keys: "quantized" {op: count} and "fp32" [{name, op}] (the QDQ graph); "runtime_int8" {op: count}
    (ONNX Runtime's integer kernels) and "runtime_fp32" [{name, op}] (nodes ONNX Runtime runs on floats).
    """
    onnx = optional_import("onnx", "onnx", "inspecting an ONNX graph")
    fp32, quantized = float_nodes(onnx.load(str(path)).graph, qdq_units_are_int8=True)
    if not quantized:
        raise ExportError(f"{path}: the quantizer inserted no QuantizeLinear/DequantizeLinear around any operator")
    with tempfile.TemporaryDirectory(prefix="seglab-int8-") as workdir:
        runtime_fp32, runtime_int8 = float_nodes(runtime_graph(path, workdir), qdq_units_are_int8=False)
    return {
        "quantized": dict(sorted(quantized.items())),
        "fp32": fp32,
        "runtime_int8": dict(sorted(runtime_int8.items())),
        "runtime_fp32": runtime_fp32,
    }


@torch.no_grad()
def compare_on_split(
    fp32: OnnxModel,
    int8: OnnxModel,
    dataset: SegmentationDataset,
    limit: int = 0,
    resamples: int = metrics.DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict:
    """Return argmax agreement and mIoU of two models on the first `limit` images of `dataset` (0: all).

    Keys: "images", "agreement" (share of all pixels with equal argmax), "lowest_agreement" (of one
    image, with its "lowest_agreement_id"), "miou_fp32", "miou_int8" (whole-image inference, as `seglab
    test` computes them) and "miou_diff" (INT8 - fp32: "diff", "ci", "p_value" of a paired bootstrap over
    images).
    """
    count = len(dataset) if limit == 0 else min(limit, len(dataset))
    if count == 0:
        raise ConfigError("the verification split holds no images")
    cms = {"fp32": [], "int8": []}
    same = total = 0
    lowest, lowest_id = 2.0, ""  # above any share, so the first image sets both
    for index in tqdm(range(count), desc="verify int8", unit="img", disable=not sys.stderr.isatty()):
        image, label = dataset.load(index)
        preds = {name: predict_logits(model, image[None]).argmax(1) for name, model in (("fp32", fp32), ("int8", int8))}
        for name, pred in preds.items():
            try:
                cm = metrics.class_counts(
                    metrics.per_image_confusion(pred, label[None], dataset.num_classes, dataset.ignore_index)
                )
            except metrics.OutOfRangeError as err:
                raise metrics.OutOfRangeError(f"{dataset.sample_id(index)}: {err}") from err
            cms[name].append(cm[0])
        equal = int((preds["fp32"] == preds["int8"]).sum())
        same, total = same + equal, total + preds["fp32"].numel()
        if equal / preds["fp32"].numel() < lowest:  # the first image with the lowest share
            lowest, lowest_id = equal / preds["fp32"].numel(), dataset.sample_id(index)
    fp32_cm, int8_cm = torch.stack(cms["fp32"]), torch.stack(cms["int8"])  # per-image class counts
    diff = metrics.paired_bootstrap(int8_cm, fp32_cm, resamples=resamples, seed=seed)
    return {
        "images": count,
        "agreement": same / total,
        "lowest_agreement": lowest,
        "lowest_agreement_id": lowest_id,
        "miou_fp32": _number(metrics.pooled_miou(fp32_cm)),
        "miou_int8": _number(metrics.pooled_miou(int8_cm)),
        "miou_diff": {k: diff[k] for k in ("diff", "ci", "p_value", "resamples", "level", "seed")},
    }


def op_counts_text(counts: dict[str, int]) -> str:
    """Return 'Conv x17, Add x6, MaxPool' for op-type counts."""
    return ", ".join(op if n == 1 else f"{op} x{n}" for op, n in counts.items()) or "none"


def nodes_text(nodes: Sequence[dict], names: int = 3) -> str:
    """Return 'Resize x3 (node_a, node_b, node_c), Pad (node_d)': nodes grouped by op type, up to `names` names each."""
    groups: dict[str, list[str]] = {}
    for node in nodes:
        groups.setdefault(node["op"], []).append(node["name"] or "?")
    parts = []
    for op, found in groups.items():
        shown = ", ".join(found[:names]) + (f", +{len(found) - names} more" if len(found) > names else "")
        parts.append(f"{op if len(found) == 1 else f'{op} x{len(found)}'} ({shown})")
    return ", ".join(parts) or "none"


def _number(value: Tensor | float) -> float | None:
    v = float(value)
    return None if v != v else v
