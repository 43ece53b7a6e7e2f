"""`seglab predict`: segment image files with a trained run; write label PNGs, overlays and probabilities.

Inputs are files, folders (their images, sorted) and glob patterns. For each image `<stem>` the output
folder gets `labels/<stem>.png` (8-bit palette PNG whose pixel values are class indices and whose colours
are the dataset's palette), `overlays/<stem>.png` (the photo blended with the coloured prediction) and,
with `--save-probs`, `probs/<stem>.npy|.safetensors` (float16 class probabilities [K, H, W]). Test-time
augmentation takes the same flags as `seglab test` and the same code (`predict_logits`).
"""

from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from seglab.engine.inference import add_tta_arguments

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
GLOB_CHARS = frozenset("*?[")


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files, folders (images directly inside, sorted) and glob patterns into a list of image files.

    An input that matches nothing, a folder without images, or two images with the same file stem (their
    outputs would collide) is an error naming them.
    """
    found: list[Path] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise FileNotFoundError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            found += images
        elif path.is_file():
            found.append(path)
        elif GLOB_CHARS & set(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"{item}: the pattern matches no files")
            found += matches
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    stems: dict[str, Path] = {}
    for path in unique:
        if path.stem in stems:
            raise ValueError(f"{stems[path.stem]} and {path} have the same name {path.stem!r}; their outputs "
                             "would overwrite each other: predict them into different --out folders")
        stems[path.stem] = path
    return unique


def read_rgb(path: Path) -> torch.Tensor:
    """Return an image file as uint8 [3, H, W] RGB (EXIF orientation applied); error naming a bad file."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.load()
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: cannot read the image ({err})") from err
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous()


def dataset_palette(runargs: dict, num_classes: int) -> np.ndarray:
    """Return the palette (uint8 [K, 3]) of the dataset the run was trained on.

    Datasets with a fixed palette need no files; a `folder` dataset reads its classes.txt from the run's
    data root.
    """
    from seglab.data.base import DATASETS, build_dataset

    name = runargs["dataset"]
    palette = getattr(DATASETS[name], "palette", None)
    if not isinstance(palette, np.ndarray):
        palette = build_dataset(name, runargs.get("data_root") or None, runargs.get("train_split", "train"),
                                **runargs.get("dataset_options", {})).palette
    if len(palette) < num_classes:
        raise ValueError(f"dataset {name!r} palette has {len(palette)} colours for {num_classes} classes")
    return np.asarray(palette, dtype=np.uint8)


def save_label_png(label: np.ndarray, palette: np.ndarray, path: Path) -> None:
    """Write a class map [H, W] as an 8-bit palette PNG (values are class indices)."""
    from PIL import Image

    if label.max(initial=0) > 255:
        raise ValueError(f"{path}: class index {label.max()} does not fit an 8-bit palette PNG")
    img = Image.fromarray(label.astype(np.uint8))
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: len(palette)] = palette[:256]
    img.putpalette(flat.reshape(-1).tolist())  # turns the 8-bit "L" image into a "P" (palette) image
    img.save(path)


def save_probs(probs: torch.Tensor, path: Path, fmt: str) -> Path:
    """Write class probabilities [K, H, W] as float16 .npy or .safetensors (key "probs"); return the path."""
    half = probs.to(torch.float16).contiguous().cpu()
    if fmt == "npy":
        path = path.with_suffix(".npy")
        np.save(path, half.numpy())
    else:
        from safetensors.torch import save_file

        path = path.with_suffix(".safetensors")
        save_file({"probs": half}, str(path))
    return path


@torch.no_grad()
def predict_files(model: torch.nn.Module, files: Sequence[Path], out: Path, palette: np.ndarray,
                  ignore_index: int = 255, *, scales: Sequence[float] = (1.0,), flip: bool = False,
                  window: int | None = None, stride: int | None = None, probs_format: str | None = None,
                  progress: bool = True) -> list[dict]:
    """Segment each file and write its outputs under `out`; return one {image, label, overlay, probs} per file."""
    from PIL import Image
    from tqdm import tqdm

    from seglab.engine.inference import predict_logits
    from seglab.report import overlay

    folders = ["labels", "overlays"] + (["probs"] if probs_format else [])
    for name in folders:
        (out / name).mkdir(parents=True, exist_ok=True)
    written = []
    for path in tqdm(files, desc="predict", unit="image", disable=not progress):
        image = read_rgb(path)
        probs = predict_logits(model, image.unsqueeze(0), scales=scales, flip=flip, window=window,
                               stride=stride)[0]
        label = probs.argmax(0).cpu().numpy()
        entry = {"image": path, "label": out / "labels" / f"{path.stem}.png",
                 "overlay": out / "overlays" / f"{path.stem}.png", "probs": None}
        save_label_png(label, palette, entry["label"])
        Image.fromarray(overlay(image.permute(1, 2, 0).numpy(), label, palette, ignore_index)).save(entry["overlay"])
        if probs_format:
            entry["probs"] = save_probs(probs, out / "probs" / path.stem, probs_format)
        written.append(entry)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `seglab predict`."""
    parser.add_argument("checkpoint", type=Path, help="run folder (uses checkpoints/last.pt) or checkpoint file")
    parser.add_argument("images", nargs="+", help="image files, folders and glob patterns (quote them)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    add_tta_arguments(parser)
    parser.add_argument("--save-probs", choices=("npy", "safetensors"), default=None,
                        help="also write float16 class probabilities [K, H, W] in this format")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device (default cuda when available)")


def main(args: argparse.Namespace) -> int:
    """Run `seglab predict`; a bad input is reported in one line naming the file (exit code 1)."""
    from seglab.engine.checkpoint import CheckpointError

    try:
        return predict_run(args)
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"seglab predict: error: {err}", file=sys.stderr)
        return 1


def predict_run(args: argparse.Namespace) -> int:
    """Segment the images of `seglab predict` and write the outputs."""
    from seglab.engine.checkpoint import load_model

    files = collect_images(args.images)
    model, runargs = load_model(args.checkpoint, map_location=args.device)
    palette = dataset_palette(runargs, model.num_classes)
    written = predict_files(model, files, args.out, palette, runargs.get("ignore_index", 255), scales=args.scales,
                            flip=args.flip, window=args.sliding_window, stride=args.stride,
                            probs_format=args.save_probs)
    kinds = "label PNGs, overlays" + (f" and {args.save_probs} probabilities" if args.save_probs else "")
    print(f"wrote {kinds} of {len(written)} images to {args.out}")
    return 0
