"""`seglab export`: a run's model as ONNX (dynamic batch, height and width) and as safetensors weights.

The exported graph is `DeployModel`: it takes uint8 RGB images [N, 3, H, W] and returns float32 logits
[N, num_classes, H, W]. Normalization with the FE's mean/std and the padding to the FE's output stride
that `seglab test` uses are inside the graph, so deployment needs neither, and the ONNX output equals
seglab's own whole-image inference. The graph comes from the torch.export-based exporter
(`torch.onnx.export(..., dynamo=True)`); every export is checked with `onnx.checker` and run with
ONNX Runtime on real photos of two or more sizes, and the largest absolute logit difference to
PyTorch must stay within a tolerance, otherwise the export fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.engine.inference import model_stride
from seglab.models.meta import SegmentationModel

DEFAULT_OPSET = 18
DEFAULT_ATOL = 1e-3
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


class ExportError(RuntimeError):
    """An export that failed its checks (ONNX checker or the comparison with PyTorch)."""


class DeployModel(nn.Module):
    """uint8 RGB images [N, 3, H, W] -> logits [N, K, H, W]: normalize, pad to the FE's stride, crop back."""

    def __init__(self, model: SegmentationModel) -> None:
        super().__init__()
        self.model = model
        self.multiple = model_stride(model)

    def forward(self, image: Tensor) -> Tensor:
        x = self.model.normalize(image)
        height, width = x.shape[-2:]
        # Zero padding of the normalized image (the FE's mean colour) at bottom/right, as seglab's inference.
        x = F.pad(x, (0, -width % self.multiple, 0, -height % self.multiple))
        return self.model(x)[..., :height, :width]


def export_onnx(model: SegmentationModel, path: str | Path, opset: int = DEFAULT_OPSET,
                static_shape: tuple[int, int, int] | None = None) -> Path:
    """Export `DeployModel(model)` to one ONNX file, checked by onnx.checker; return the path.

    Batch, height and width are dynamic, unless `static_shape` (N, H, W) fixes them (as `seglab bench` does).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
                deploy, (example,), str(path), dynamo=True, opset_version=opset, dynamic_shapes=dynamic,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False, verbose=False,
            )
    finally:
        shapes_log.setLevel(level)
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    graph = onnx.load(str(path))
    if static_shape is None:  # name the dynamic axes (torch.export calls them s0, s1, ...)
        graph = update_inputs_outputs_dims(graph, {INPUT_NAME: ["batch", 3, "height", "width"]},
                                           {OUTPUT_NAME: ["batch", model.num_classes, "height", "width"]})
        onnx.save(graph, str(path))
    onnx.checker.check_model(graph, full_check=True)
    return path


def onnx_session(path: str | Path, threads: int = 0, providers: Sequence[str] = ("CPUExecutionProvider",)):
    """Return an onnxruntime InferenceSession (`threads` intra-op threads; 0 lets onnxruntime choose)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


def sample_photos() -> list[Tensor]:
    """Return scikit-image's sample photos astronaut (512x512) and chelsea (300x451) as uint8 [3, H, W]."""
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError("export verification uses scikit-image's sample photos: `pip install scikit-image`, "
                          "or pass your own with --verify-images") from err
    return [torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1) for img in (data.astronaut(),
                                                                                     data.chelsea())]


def read_images(paths: Sequence[str | Path]) -> list[Tensor]:
    """Read RGB image files as uint8 [3, H, W] tensors (error naming a file that cannot be read)."""
    from PIL import Image

    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()
                images.append(torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read the image ({err})") from err
    return images


@torch.no_grad()
def verify_onnx(model: SegmentationModel, path: str | Path, images: Sequence[Tensor],
                atol: float = DEFAULT_ATOL) -> list[dict]:
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
            raise ExportError(f"{path}: ONNX output shape {got.shape} != PyTorch {expected.shape} "
                              f"for an image of size {tuple(image.shape[-2:])}")
        diff = float(np.abs(got - expected).max())
        agreement = float((got.argmax(1) == expected.argmax(1)).mean())
        results.append({"size": tuple(image.shape[-2:]), "max_abs_diff": diff, "label_agreement": agreement})
        if not diff <= atol:
            raise ExportError(f"{path}: ONNX Runtime and PyTorch logits differ by {diff:.3g} (> --atol {atol:g}) "
                              f"on an image of size {tuple(image.shape[-2:])}")
    return results


def model_metadata(model: SegmentationModel, runargs: dict) -> dict[str, str]:
    """Return the string metadata stored with exported weights: what `build_model` needs, classes, mean/std.

    `runargs` is the run's resolved config (as `load_model` returns it); it must name basenet and decoder.
    """
    missing = [k for k in ("basenet", "decoder") if k not in runargs]
    if missing:
        raise ValueError(f"runargs lack {', '.join(missing)}, needed to rebuild the model from its weights")
    return {
        "basenet": runargs["basenet"],
        "decoder": runargs["decoder"],
        "num_classes": str(model.num_classes),
        "output_stride": str(runargs.get("output_stride", 32)),
        "decoder_options": json.dumps(runargs.get("decoder_options", {})),
        "class_names": json.dumps(runargs.get("class_names", [])),
        "input_mean": json.dumps(list(model.input_mean)),
        "input_std": json.dumps(list(model.input_std)),
    }


def save_weights(model: SegmentationModel, path: str | Path, runargs: dict) -> Path:
    """Save the model's state dict as safetensors, with the metadata needed to rebuild it."""
    from safetensors.torch import save_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path), metadata=model_metadata(model, runargs))
    return path


def load_weights(path: str | Path) -> SegmentationModel:
    """Rebuild a model from a safetensors file written by `save_weights` (eval mode, CPU)."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    from seglab.models import build_model

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    missing = [k for k in ("basenet", "decoder", "num_classes", "output_stride", "decoder_options") if k not in meta]
    if missing:
        raise ValueError(f"{path}: safetensors metadata lacks {', '.join(missing)}; was it written by seglab export?")
    model = build_model(meta["basenet"], meta["decoder"], int(meta["num_classes"]), int(meta["output_stride"]),
                        **json.loads(meta["decoder_options"]))
    load_model(model, str(path), strict=True)
    return model.eval()


def run_folder(target: Path) -> Path:
    """Return the run folder of a run folder or of a checkpoint file inside <run>/checkpoints/."""
    if target.is_dir():
        return target
    return target.parent.parent if target.parent.name == "checkpoints" else target.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `seglab export`."""
    parser.add_argument("target", type=Path, metavar="RUN",
                        help="run folder (uses checkpoints/last.pt) or a checkpoint file")
    parser.add_argument("--format", choices=("onnx",), default="onnx",
                        help="export format (default onnx); safetensors weights are always written too")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default <run>/export)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"largest allowed |ONNX - PyTorch| logit difference (default {DEFAULT_ATOL:g})")
    parser.add_argument("--verify-images", nargs="+", type=Path, default=None, metavar="IMAGE",
                        help="images to compare ONNX Runtime with PyTorch on (default: scikit-image's "
                             "astronaut 512x512 and chelsea 300x451 photos)")


def main(args: argparse.Namespace) -> int:
    """Run `seglab export`; a failed check or an unreadable input is reported in one line (exit code 1)."""
    from seglab.engine.checkpoint import CheckpointError

    try:
        return export_run(args)
    except (ExportError, CheckpointError, ImportError, ValueError, FileNotFoundError) as err:
        print(f"seglab export: error: {err}", file=sys.stderr)
        return 1


def export_run(args: argparse.Namespace) -> int:
    """Export a run's model to ONNX and safetensors, verify the ONNX file, and print the comparison."""
    from seglab.engine.checkpoint import load_model

    model, runargs = load_model(args.target, map_location="cpu")
    out = args.out or run_folder(args.target) / "export"
    images = read_images(args.verify_images) if args.verify_images else sample_photos()
    onnx_path = export_onnx(model, out / "model.onnx", args.opset)
    print(f"wrote {onnx_path} (opset {args.opset}, input {INPUT_NAME!r} uint8 [N,3,H,W] RGB, output "
          f"{OUTPUT_NAME!r} float32 [N,{model.num_classes},H,W]; batch, height and width dynamic)")
    checks = verify_onnx(model, onnx_path, images, args.atol)
    for check in checks:
        print(f"  verified on a {check['size'][0]}x{check['size'][1]} image: max |ONNX - PyTorch| = "
              f"{check['max_abs_diff']:.3g} (tolerance {args.atol:g}), argmax agreement "
              f"{100 * check['label_agreement']:.3f}%")
    weights = save_weights(model, out / "model.safetensors", runargs)
    print(f"wrote {weights}")
    info = {"onnx": onnx_path.name, "safetensors": weights.name, "opset": args.opset, "atol": args.atol,
            "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", 3, "H", "W"], "channels": "RGB"},
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", model.num_classes, "H", "W"]},
            "checks": checks, **model_metadata(model, runargs)}
    (out / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    return 0
