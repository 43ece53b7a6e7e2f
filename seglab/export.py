"""`seglab export`: a run's model as ONNX (dynamic batch, height and width) and as safetensors weights, and
with `--int8` as a statically quantized INT8 ONNX model whose accuracy cost is measured at export time.

The exported graph is `seglab.engine.inference.DeployModel`: it takes uint8 RGB images [N, 3, H, W] and
returns float32 logits [N, num_classes, H, W]. Normalization with the basenet's mean/std and the padding to
the basenet's output stride that `seglab test` uses are inside the graph, so deployment needs neither, and
the ONNX output equals seglab's own whole-image inference. The graph comes from the torch.export-based exporter
(`torch.onnx.export(..., dynamo=True)`); every export is checked with `onnx.checker` and run with
ONNX Runtime on real photos of two or more sizes, and the largest absolute logit difference to
PyTorch must stay within a tolerance, otherwise the export fails.

With `--int8`, `seglab.quantize` writes model_int8.onnx next to model.onnx (calibrated on training images),
reports which operators stayed fp32, and both ONNX models are evaluated on a split (`--verify-split`):
argmax agreement, the mIoU of each and a paired bootstrap CI of the difference, printed and stored in
export.json.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import Tensor

from seglab import quantize
from seglab.config import EXPORT_ATOL, ONNX_OPSET, ExportConfig, TrainConfig, to_dict
from seglab.data.base import build_dataset
from seglab.data.io import PHOTO_FORMATS, read_image
from seglab.deployed import INPUT_NAME, OUTPUT_NAME, WEIGHTS_FILE, OnnxModel, onnx_session
from seglab.engine.checkpoint import LoadedRun, load_run
from seglab.engine.inference import DeployModel
from seglab.errors import CheckpointError, ExportError, PathError
from seglab.evaluation import model_info
from seglab.models import build_model
from seglab.models.meta import SegmentationModel
from seglab.plugins import load_plugins, optional_import
from seglab.runs import atomic_write, ensure_dir, resolve_target

INT8_FILE = "model_int8.onnx"


def export_onnx(
    model: SegmentationModel,
    path: str | Path,
    opset: int = ONNX_OPSET,
    static_shape: tuple[int, int, int] | None = None,
) -> Path:
    """Export `DeployModel(model)` to one ONNX file, checked by onnx.checker; return the path.

    Batch, height and width are dynamic, unless `static_shape` (N, H, W) fixes them (as `seglab bench` does).
    """
    path = Path(path)
    ensure_dir(path.parent, "--out")
    deploy = DeployModel(model).eval()
    if static_shape is None:
        # Batch 2 and sizes that are no multiple of the stride, so that no dimension specializes to a constant.
        shape, dim = (2, 2 * deploy.multiple + 5, 3 * deploy.multiple + 3), torch.export.Dim.DYNAMIC
        dynamic = {"image": {0: dim, 2: dim, 3: dim}}
    else:
        shape, dynamic = static_shape, None
    example = torch.randint(0, 256, (shape[0], 3, shape[1], shape[2]), dtype=torch.uint8)
    # torch.export warns and logs (with tracebacks) about every symbolic-shape guard it cannot simplify;
    # that is noise here: onnx.checker and the comparison with PyTorch decide whether an export is good.
    shapes_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = shapes_log.level
    shapes_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                deploy,
                (example,),
                str(path),
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=dynamic,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                external_data=False,
                verbose=False,
            )
    finally:
        shapes_log.setLevel(level)
    onnx = optional_import("onnx", "onnx", "seglab export")
    update_dims = optional_import("onnx.tools.update_model_dims", "onnx", "seglab export")

    graph = onnx.load(str(path))
    if static_shape is None:  # name the dynamic axes (torch.export calls them s0, s1, ...)
        graph = update_dims.update_inputs_outputs_dims(
            graph,
            {INPUT_NAME: ["batch", 3, "height", "width"]},
            {OUTPUT_NAME: ["batch", model.num_classes, "height", "width"]},
        )
        onnx.save(graph, str(path))
    onnx.checker.check_model(graph, full_check=True)
    return path


def sample_photos() -> list[Tensor]:
    """Return scikit-image's sample photos astronaut (512x512) and chelsea (300x451) as uint8 [3, H, W]."""
    data = optional_import("skimage.data", "onnx", "verifying an export on sample photos (or pass --verify-images)")
    return [torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1) for img in (data.astronaut(), data.chelsea())]


def read_images(paths: Sequence[str | Path]) -> list[Tensor]:
    """Read RGB image files as uint8 [3, H, W] tensors (an error names a file that cannot be read)."""
    return [read_image(Path(path), formats=PHOTO_FORMATS, exif=True) for path in paths]


@torch.no_grad()
def verify_onnx(
    model: SegmentationModel, path: str | Path, images: Sequence[Tensor], atol: float = EXPORT_ATOL
) -> list[dict]:
    """Run PyTorch and ONNX Runtime on each image; return per-image diffs, raise ExportError above `atol`.

    Each entry: {"size": (H, W), "max_abs_diff": float, "label_agreement": fraction of equal argmax}.
    """
    deploy = DeployModel(model).eval()
    session = onnx_session(path)
    results = []
    for image in images:
        batch = image.unsqueeze(0)
        expected = deploy(batch).float().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
        if got.shape != expected.shape:
            raise ExportError(
                f"{path}: ONNX output shape {got.shape} != PyTorch {expected.shape} "
                f"for an image of size {tuple(image.shape[-2:])}"
            )
        diff = float(np.abs(got - expected).max())
        agreement = float((got.argmax(1) == expected.argmax(1)).mean())
        results.append({"size": tuple(image.shape[-2:]), "max_abs_diff": diff, "label_agreement": agreement})
        if not diff <= atol:
            raise ExportError(
                f"{path}: ONNX Runtime and PyTorch logits differ by {diff:.3g} (> --atol {atol:g}) "
                f"on an image of size {tuple(image.shape[-2:])}"
            )
    return results


def model_metadata(
    model: SegmentationModel,
    config: TrainConfig,
    class_names: Sequence[str],
    ignore_index: int = 255,
    step: int = 0,
    weights: str = "model",
) -> dict[str, str]:
    """Return the string metadata stored with exported weights: what `build_model` needs, classes, mean/std,
    the run's config and step (its dataset is what `seglab test MODEL.onnx` evaluates on by default) and
    which of the checkpoint's weights they are ("model": trained, "ema": their moving average)."""
    return {
        "basenet": config.basenet,
        "decoder": config.decoder,
        "num_classes": str(model.num_classes),
        "output_stride": str(config.output_stride),
        "decoder_options": json.dumps(config.decoder_options),
        "plugins": json.dumps(config.plugins),
        "class_names": json.dumps(list(class_names)),
        "input_mean": json.dumps(list(model.input_mean)),
        "input_std": json.dumps(list(model.input_std)),
        "ignore_index": str(ignore_index),
        "step": str(step),
        "weights": weights,
        "config": json.dumps(to_dict(config)),
    }


def save_weights(
    model: SegmentationModel,
    path: str | Path,
    config: TrainConfig,
    class_names: Sequence[str],
    ignore_index: int = 255,
    step: int = 0,
    weights: str = "model",
) -> Path:
    """Save the model's state dict as safetensors, with the metadata (from its run's config) that rebuilds it."""
    path = Path(path)
    ensure_dir(path.parent, "--out")
    save_model(model, str(path), metadata=model_metadata(model, config, class_names, ignore_index, step, weights))
    return path


def load_weights(path: str | Path) -> SegmentationModel:
    """Rebuild a model from a safetensors file written by `save_weights` (eval mode, CPU)."""
    path = Path(path)
    if not path.is_file():
        raise PathError(f"{path} does not exist: give a model.safetensors that `seglab export` wrote")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    missing = [k for k in ("basenet", "decoder", "num_classes", "output_stride", "decoder_options") if k not in meta]
    if missing:
        raise CheckpointError(
            f"{path}: safetensors metadata lacks {', '.join(missing)}; was it written by seglab export?"
        )
    load_plugins(json.loads(meta.get("plugins", "[]")))
    model = build_model(
        meta["basenet"],
        meta["decoder"],
        int(meta["num_classes"]),
        int(meta["output_stride"]),
        **json.loads(meta["decoder_options"]),
    )
    load_model(model, str(path), strict=True)
    return model.eval()


def export_int8(cfg: ExportConfig, loaded: LoadedRun, fp32_path: Path) -> dict:
    """Quantize the exported fp32 model, report what stayed fp32, compare both on --verify-split; return the
    export.json "int8" entry."""
    config = loaded.config
    data_root = cfg.data_root or config.data_root or None
    calibration_split = cfg.calibrate_split or config.train_split
    calibration_set = build_dataset(config.dataset, data_root, calibration_split, **config.dataset_options)
    indices = quantize.calibration_indices(len(calibration_set), cfg.calibrate)
    path = quantize.quantize_onnx(
        fp32_path,
        fp32_path.parent / INT8_FILE,
        lambda i: calibration_set.load(indices[i])[0],
        len(indices),
        cfg.calibration,
        cfg.reduce_range,
    )
    report = quantize.graph_report(path)
    print(
        f"wrote {path} (INT8, QDQ: int8 weights per channel{' in 7 bits' if cfg.reduce_range else ''}, uint8 "
        f"activations calibrated ({cfg.calibration}) on {len(indices)} {config.dataset} {calibration_split} images)"
    )
    print(f"  quantized: {quantize.op_counts_text(report['quantized'])}")
    print(f"  stayed fp32: {quantize.nodes_text(report['fp32'])}")
    print(
        f"  ONNX Runtime (CPU) runs {quantize.op_counts_text(report['runtime_int8'])} in integers and these "
        f"in fp32: {quantize.nodes_text(report['runtime_fp32'])}"
    )
    verify_set = build_dataset(config.dataset, data_root, cfg.verify_split, **config.dataset_options)
    mean, std = loaded.model.input_mean, loaded.model.input_std
    comparison = quantize.compare_on_split(
        OnnxModel(fp32_path, mean, std, loaded.model.num_classes),
        OnnxModel(path, mean, std, loaded.model.num_classes),
        verify_set,
        cfg.verify_limit,
    )
    diff = comparison["miou_diff"]
    low, high = diff["ci"]
    print(
        f"  on {comparison['images']} {config.dataset} {cfg.verify_split} images: argmax agreement with fp32 "
        f"{100 * comparison['agreement']:.2f}% (lowest image {100 * comparison['lowest_agreement']:.2f}%, "
        f"{comparison['lowest_agreement_id']}); mIoU fp32 {_pct(comparison['miou_fp32'])}, INT8 "
        f"{_pct(comparison['miou_int8'])}, INT8 - fp32 {100 * diff['diff']:+.2f} points "
        f"(95% CI {100 * low:+.2f} to {100 * high:+.2f})"
    )
    return {
        "onnx": path.name,
        "format": "QDQ",
        "weights": "int8, symmetric, per channel" + (", 7-bit range" if cfg.reduce_range else ""),
        "activations": "uint8, asymmetric, per tensor",
        "calibration": {
            "method": cfg.calibration,
            "images": len(indices),
            "dataset": config.dataset,
            "split": calibration_split,
            "indices": indices,
        },
        "graph": report,
        "verification": {"dataset": config.dataset, "split": cfg.verify_split, **comparison},
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def export(cfg: ExportConfig) -> dict:
    """Export a run's model to ONNX and safetensors (and with --int8 an INT8 ONNX model), verify, print the
    comparisons and write export.json; return its content."""
    load_plugins(cfg.plugins)
    target = resolve_target(cfg.run)
    loaded = load_run(target, "cpu", ema=cfg.ema)
    model = loaded.model
    if loaded.weights == "ema":
        print(f"exporting the EMA weights (--ema {loaded.config.ema}); --no-ema for the trained ones")
    if cfg.out:
        out = Path(cfg.out)
    elif target.run is not None:
        out = target.run.export_dir
    else:
        out = target.checkpoint.parent / "export"
    images = read_images(cfg.verify_images) if cfg.verify_images else sample_photos()
    onnx_path = export_onnx(model, out / "model.onnx", cfg.opset)
    print(
        f"wrote {onnx_path} (opset {cfg.opset}, input {INPUT_NAME!r} uint8 [N,3,H,W] RGB, output "
        f"{OUTPUT_NAME!r} float32 [N,{model.num_classes},H,W]; batch, height and width dynamic)"
    )
    checks = verify_onnx(model, onnx_path, images, cfg.atol)
    for check in checks:
        print(
            f"  verified on a {check['size'][0]}x{check['size'][1]} image: max |ONNX - PyTorch| = "
            f"{check['max_abs_diff']:.3g} (tolerance {cfg.atol:g}), argmax agreement "
            f"{100 * check['label_agreement']:.3f}%"
        )
    facts = (loaded.config, loaded.class_names, loaded.ignore_index, loaded.step, loaded.weights)
    metadata = model_metadata(model, *facts)
    weights = save_weights(model, out / WEIGHTS_FILE, *facts)
    print(f"wrote {weights}")
    info = {
        "onnx": onnx_path.name,
        "safetensors": weights.name,
        "opset": cfg.opset,
        "atol": cfg.atol,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", 3, "H", "W"], "channels": "RGB"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", model.num_classes, "H", "W"]},
        "checks": checks,
        "model": model_info(model, loaded.config),
        **metadata,
    }
    if cfg.int8:
        info["int8"] = export_int8(cfg, loaded, onnx_path)
    atomic_write(out / "export.json", json.dumps(info, indent=2) + "\n")
    return info
