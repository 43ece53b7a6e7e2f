"""Exported models run through ONNX Runtime: sessions, and `OnnxModel`, which makes a .onnx file that
`seglab export` wrote look like a seglab model to the one inference path (`seglab.engine.inference`), so
that `seglab test MODEL.onnx`, `seglab.load_model("MODEL.onnx")` and the INT8 export's verification
evaluate the deployed artifact itself, fp32 or INT8, with the same code as a PyTorch checkpoint.

How the adapter fits the inference path: the exported graph takes uint8 images and normalizes and pads
them itself (`DeployModel`). `OnnxModel.normalize` maps uint8 images to the basenet's normalized input
exactly as the PyTorch model does, so everything the inference path does to normalized images
(resizing for multi-scale testing, flipping, sliding windows) is unchanged; `forward` inverts the
normalization, rounds to uint8 (exact for unresized images) and runs the graph; and the adapter
reports an output stride of 1, so the inference path pads nothing and the graph's own padding to the
basenet's stride (with the mean colour, as in PyTorch) applies. Only resized images (test scales other
than 1) pass through uint8 rounding that PyTorch does not have: what a deployment resizing uint8 frames
does too.

What a model needs besides the graph (classes, ignore index, mean/std, the run's config with its dataset)
comes from the `export.json` beside it, or from the metadata of the `model.safetensors` beside it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import safe_open
from torch import Tensor, nn

from seglab.config import TrainConfig, from_dict
from seglab.engine.checkpoint import LoadedRun, load_run
from seglab.engine.distributed import resolve_device
from seglab.errors import CheckpointError, ConfigError, PathError
from seglab.plugins import optional_import
from seglab.runs import Target, resolve_target

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
ONNX_SUFFIX = ".onnx"
EXPORT_INFO = "export.json"
WEIGHTS_FILE = "model.safetensors"
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def onnx_session(path: str | Path, threads: int = 0, providers: Sequence[str] = ("CPUExecutionProvider",)):
    """Return an onnxruntime InferenceSession (`threads` intra-op threads; 0 lets onnxruntime choose)."""
    ort = optional_import("onnxruntime", "onnx", "ONNX Runtime")

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


def is_onnx(path: str | Path | Target) -> bool:
    """Return True when `path` (or a target's file) is an ONNX model file."""
    file = path.checkpoint if isinstance(path, Target) else Path(path)
    return file.suffix.lower() == ONNX_SUFFIX


def onnx_device(spec: str) -> torch.device:
    """Return the device an ONNX model runs on: `auto` is CUDA only when torch and onnxruntime both have it."""
    ort = optional_import("onnxruntime", "onnx", "running an ONNX model")
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if spec == "auto":
        return torch.device("cuda" if has_cuda and torch.cuda.is_available() else "cpu")
    device = resolve_device(spec)
    if device.type == "cuda" and not has_cuda:
        raise ConfigError(
            "--device cuda with an ONNX model needs onnxruntime-gpu (the installed onnxruntime has only "
            + ", ".join(ort.get_available_providers())
            + "); install it or use --device cpu"
        )
    return device


def providers_for(device: torch.device) -> list[str]:
    """Return the onnxruntime execution providers for `device`."""
    return ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]


def graph_precision(path: str | Path) -> str:
    """Return "int8" for a graph holding QuantizeLinear/DequantizeLinear nodes, else "fp32"."""
    onnx = optional_import("onnx", "onnx", "reading an ONNX model")
    graph = onnx.load(str(path), load_external_data=False).graph
    return "int8" if any(node.op_type in QDQ_OPS for node in graph.node) else "fp32"


class OnnxModel(nn.Module):
    """An exported ONNX model with the interface the inference path uses (see the module docstring).

    `normalize(uint8 images)` -> normalized float images, `forward(normalized, padded)` -> logits, and
    `num_classes`, `input_mean`, `input_std`, `basenet.output_stride` (1: the graph pads itself).
    """

    def __init__(
        self,
        path: str | Path,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        *,
        info: dict | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int = 0,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = onnx_session(self.path, threads, providers)
        self.precision = graph_precision(self.path)
        self.num_classes = num_classes
        self.input_mean, self.input_std = tuple(mean), tuple(std)
        self.info = info or {}
        # The inference path pads to `basenet.output_stride`; the graph pads to its own stride already.
        self.basenet = SimpleNamespace(output_stride=1)
        # Frozen parameters rather than buffers: the inference path finds the device with next(parameters()).
        self.mean = nn.Parameter(torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), requires_grad=False)
        self.std = nn.Parameter(torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), requires_grad=False)

    def normalize(self, images: Tensor) -> Tensor:
        """Map uint8 images [N,3,H,W] to the basenet's normalized input, as `SegmentationModel.normalize` does."""
        if images.dtype != torch.uint8:
            raise TypeError(f"normalize expects uint8 images, got {images.dtype}")
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        return (images.float() / 255.0 - mean) / std

    def to_uint8(self, x: Tensor) -> Tensor:
        """Invert `normalize`: normalized float images -> the uint8 images the graph takes (rounded, clamped)."""
        return ((x * self.std.to(x.device) + self.mean.to(x.device)) * 255.0).round().clamp(0, 255).to(torch.uint8)

    def forward(self, x: Tensor) -> Tensor:
        images = self.to_uint8(x).cpu().numpy()
        logits = self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
        return torch.from_numpy(logits).to(x.device)


def read_metadata(path: Path) -> dict[str, str]:
    """Return the seglab metadata of an exported .onnx file: export.json beside it, else model.safetensors."""
    info_file, weights = path.parent / EXPORT_INFO, path.parent / WEIGHTS_FILE
    if info_file.is_file():
        try:
            info = json.loads(info_file.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise PathError(f"{info_file} cannot be read ({err}): run `seglab export` again") from None
        named = [info.get("onnx"), (info.get("int8") or {}).get("onnx")]
        if path.name not in named:
            raise ConfigError(
                f"{info_file} describes {', '.join(n for n in named if n)}, not {path.name}: give a model "
                "that `seglab export` wrote into that folder"
            )
        return info
    if weights.is_file():
        with safe_open(str(weights), framework="pt") as f:
            return dict(f.metadata() or {})
    raise PathError(
        f"{path}: neither {EXPORT_INFO} nor {WEIGHTS_FILE} beside it, so its classes and normalization are "
        "unknown: give a model with the files `seglab export` wrote next to it"
    )


def load_onnx(path: str | Path, device: str | torch.device = "cpu", threads: int = 0) -> LoadedRun:
    """Return an exported .onnx file as a LoadedRun: an `OnnxModel` on `device` with the run's config and classes.

    The target is the file, and belongs to the run whose export/ folder holds it.
    """
    target = resolve_target(path)
    meta = read_metadata(target.checkpoint)
    missing = [k for k in ("config", "num_classes", "class_names", "input_mean", "input_std") if k not in meta]
    if missing:
        raise CheckpointError(
            f"{target.checkpoint}: the export metadata lacks {', '.join(missing)}; it was written by an "
            "older seglab: run `seglab export` again"
        )
    config = from_dict(TrainConfig, json.loads(meta["config"]), f"{target.checkpoint} (export metadata)")
    device = torch.device(device)
    model = OnnxModel(
        target.checkpoint,
        json.loads(meta["input_mean"]),
        json.loads(meta["input_std"]),
        int(meta["num_classes"]),
        info=meta,
        providers=providers_for(device),
        threads=threads,
    )
    return LoadedRun(
        model.to(device).eval(),
        config,
        int(meta.get("step", 0)),
        list(json.loads(meta["class_names"])),
        int(meta.get("ignore_index", 255)),
        target,
        meta.get("weights", "model"),
    )


def load_target(path: str | Path | Target, device: str = "auto", ema: bool = True) -> LoadedRun:
    """Return the model of a run folder or checkpoint (`load_run`; with `ema`, its EMA weights where it has
    them) or of an exported .onnx file (`load_onnx`: the weights it was exported with).

    `device` is a `--device` value: for an ONNX model `auto` means CUDA only where onnxruntime has it.
    """
    if is_onnx(path):
        return load_onnx(path.checkpoint if isinstance(path, Target) else path, onnx_device(device))
    return load_run(path, resolve_device(device), ema=ema)
