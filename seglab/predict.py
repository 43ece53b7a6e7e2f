"""`seglab predict`: segment images and videos with a trained run (or an exported .onnx model); write label
PNGs, overlays and probabilities.

Inputs are files, folders (their images and videos, sorted) and glob patterns. For each image `<stem>`
the output folder gets `labels/<stem>.png` (8-bit palette PNG whose pixel values are class indices and
whose colours are the dataset's palette), `overlays/<stem>.png` (the photo blended with the coloured
prediction) and, with `--save-probs`, `probs/<stem>.npy|.safetensors` (float16 class probabilities
[K, H, W]). A video `<stem>.mp4|.mkv|.avi|.webm` is decoded as a stream (`seglab.video`) and segmented
`--batch-size` frames at a time into `overlays/<stem>.<same suffix>` (same frame count, frame rate and
size) and, with `--frame-labels` (and `--save-probs`), `labels/<stem>/000001.png ...` per frame.
Test-time augmentation takes the same flags as `seglab test` and the same code (`predict_logits`).
"""

from __future__ import annotations

import glob
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from seglab.config import InferenceOptions, PredictConfig, TrainConfig
from seglab.data.base import DATASETS, build_dataset
from seglab.data.io import PHOTO_FORMATS, read_image, write_label_png, write_png
from seglab.deployed import load_target
from seglab.engine.inference import predict_logits
from seglab.errors import ConfigError, PathError
from seglab.plugins import load_plugins
from seglab.runs import ensure_dir
from seglab.video import VIDEO_SUFFIXES, VideoWriter, is_video, read_frames
from seglab.visual import overlay

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")  # the files of PHOTO_FORMATS
GLOB_CHARS = frozenset("*?[")


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files, folders (images and videos directly inside, sorted) and glob patterns into a list of files.

    An input that matches nothing, a folder without images, or two images with the same file stem (their
    outputs would collide) is an error naming them.
    """
    found: list[Path] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not images:
                raise PathError(f"{path}: folder holds no images or videos ({', '.join(suffixes)})")
            found += images
        elif path.is_file():
            found.append(path)
        elif GLOB_CHARS & set(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise PathError(f"{item}: the pattern matches no files")
            found += matches
        else:
            raise PathError(f"{item}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    stems: dict[str, Path] = {}
    for path in unique:
        if path.stem in stems:
            raise ConfigError(
                f"{stems[path.stem]} and {path} have the same name {path.stem!r}; their outputs "
                "would overwrite each other: predict them into different --out folders"
            )
        stems[path.stem] = path
    return unique


def dataset_palette(config: TrainConfig, num_classes: int) -> np.ndarray:
    """Return the palette (uint8 [K, 3]) of the dataset the run was trained on.

    Datasets with a fixed palette need no files; a `folder` dataset reads its classes.txt from the run's
    data root.
    """
    palette = getattr(DATASETS[config.dataset], "palette", None)
    if not isinstance(palette, np.ndarray):
        palette = build_dataset(
            config.dataset, config.data_root or None, config.train_split, **config.dataset_options
        ).palette
    if len(palette) < num_classes:
        raise ConfigError(f"dataset {config.dataset!r} palette has {len(palette)} colours for {num_classes} classes")
    return np.asarray(palette, dtype=np.uint8)


def save_probs(probs: torch.Tensor, path: Path, fmt: str) -> Path:
    """Write class probabilities [K, H, W] as float16 .npy or .safetensors (key "probs"); return the path."""
    half = probs.to(torch.float16).contiguous().cpu()
    if fmt == "npy":
        path = path.with_suffix(".npy")
        np.save(path, half.numpy())
    else:
        path = path.with_suffix(".safetensors")
        save_file({"probs": half}, str(path))
    return path


def infer(model: torch.nn.Module, images: torch.Tensor, options: InferenceOptions) -> torch.Tensor:
    """Return class probabilities [N, K, H, W] of uint8 images [N, 3, H, W] with the test-time options."""
    return predict_logits(
        model,
        images,
        scales=options.scales,
        flip=options.flip,
        window=options.sliding_window,
        window_step=options.window_step,
    )


@torch.no_grad()
def predict_video(
    model: torch.nn.Module,
    path: Path,
    out: Path,
    palette: np.ndarray,
    ignore_index: int = 255,
    options: InferenceOptions | None = None,
    batch_size: int = 8,
    frame_labels: bool = False,
    probs_format: str | None = None,
    progress: bool = True,
) -> dict:
    """Segment a video `batch_size` frames at a time, streaming: write overlays/<stem><suffix> (same frame
    count, rate and size) and, with `frame_labels` (`probs_format`), labels/<stem>/NNNNNN.png (probs/...);
    return {image, label, overlay, probs, frames}."""
    options = options or InferenceOptions()
    info, frames = read_frames(path)
    entry = {
        "image": path,
        "label": out / "labels" / path.stem if frame_labels else None,
        "overlay": out / "overlays" / path.name,
        "probs": out / "probs" / path.stem if probs_format else None,
        "frames": 0,
    }
    for folder in (entry["overlay"].parent, entry["label"], entry["probs"]):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    expected = info.frames or (round(info.duration * info.rate) if info.duration else None)
    bar = tqdm(total=expected, desc=path.name, unit="frame", disable=not progress)
    with VideoWriter(entry["overlay"], info.width, info.height, info.rate) as writer:
        batch: list[np.ndarray] = []
        for frame in itertools.chain(frames, [None]):  # None flushes the last, partial batch
            if frame is not None:
                batch.append(frame)
            if batch and (frame is None or len(batch) == batch_size):
                images = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
                probs = infer(model, images, options)
                labels = probs.argmax(1).cpu().numpy()
                for rgb, label, prob in zip(batch, labels, probs, strict=True):
                    entry["frames"] += 1
                    name = f"{entry['frames']:06d}"
                    writer.write(overlay(rgb, label, palette, ignore_index))
                    if frame_labels:
                        write_label_png(label, palette, entry["label"] / f"{name}.png")
                    if probs_format:
                        save_probs(prob, entry["probs"] / name, probs_format)
                bar.update(len(batch))
                batch = []
    bar.close()
    return entry


@torch.no_grad()
def predict_files(
    model: torch.nn.Module,
    files: Sequence[Path],
    out: Path,
    palette: np.ndarray,
    ignore_index: int = 255,
    options: InferenceOptions | None = None,
    probs_format: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Segment each file and write its outputs under `out`; return one {image, label, overlay, probs} per file."""
    options = options or InferenceOptions()
    folders = ["labels", "overlays"] + (["probs"] if probs_format else [])
    for name in folders:
        ensure_dir(out / name, "--out")
    written = []
    for path in tqdm(files, desc="predict", unit="image", disable=None if progress else True):  # off unless a tty
        image = read_image(path, formats=PHOTO_FORMATS, exif=True)
        probs = infer(model, image.unsqueeze(0), options)[0]
        label = probs.argmax(0).cpu().numpy()
        entry = {
            "image": path,
            "label": out / "labels" / f"{path.stem}.png",
            "overlay": out / "overlays" / f"{path.stem}.png",
            "probs": None,
        }
        write_label_png(label, palette, entry["label"])
        write_png(
            Image.fromarray(overlay(image.permute(1, 2, 0).numpy(), label, palette, ignore_index)), entry["overlay"]
        )
        if probs_format:
            entry["probs"] = save_probs(probs, out / "probs" / path.stem, probs_format)
        written.append(entry)
    return written


def predict(cfg: PredictConfig) -> list[dict]:
    """Segment the images and videos `cfg` names with its run (or exported model) and write the outputs;
    return what was written, one entry per file."""
    load_plugins(cfg.plugins)
    files = collect_images(cfg.images)
    loaded = load_target(cfg.run, cfg.device, cfg.ema)
    if loaded.weights == "ema":
        print(f"segmenting with the EMA weights (--ema {loaded.config.ema}); --no-ema for the trained ones")
    palette = dataset_palette(loaded.config, loaded.model.num_classes)
    out = Path(cfg.out)
    progress = sys.stderr.isatty()
    images = [f for f in files if not is_video(f)]
    written = predict_files(
        loaded.model, images, out, palette, loaded.ignore_index, cfg, probs_format=cfg.save_probs, progress=progress
    )
    if images:
        kinds = "label PNGs, overlays" + (f" and {cfg.save_probs} probabilities" if cfg.save_probs else "")
        print(f"wrote {kinds} of {len(written)} images to {cfg.out}")
    for path in (f for f in files if is_video(f)):
        entry = predict_video(
            loaded.model,
            path,
            out,
            palette,
            loaded.ignore_index,
            cfg,
            cfg.batch_size,
            cfg.frame_labels,
            cfg.save_probs,
            progress,
        )
        extra = " and per-frame label PNGs" if cfg.frame_labels else ""
        extra += f" and {cfg.save_probs} probabilities" if cfg.save_probs else ""
        print(f"wrote the overlay video {entry['overlay']} ({entry['frames']} frames){extra}")
        written.append(entry)
    return written
