"""Train-transform throughput per DataLoader worker: seglab's pipeline vs the common way, same run.

Both decode the same VOC-like JPEGs (about 500x375) and palette label PNGs and apply the same recipe:
random scale in [0.5, 2.0], crop 512x512 (padding where smaller: image 0, label 255), random
horizontal flip, and what the model needs as input.

- seglab: `AugmentedDataset` over the `voc` dataset with `TrainTransform`: the crop window is chosen
  in source pixels and only it is resized; output uint8 image and label (normalization happens on
  the device, after the transfer).
- common: per-sample PIL transforms as in torchvision's segmentation reference (references/
  segmentation): resize the whole image and label, flip, pad, crop, PILToTensor, float conversion
  and Normalize on the CPU, label as int64.

One process, one intra-op thread (what a DataLoader worker has). Rounds alternate between the two;
the figure is the median over rounds of images per second.

    .venv/bin/python benchmarks/data_pipeline.py            # default: 48 images, 7 rounds
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from seglab.data import Augment, AugmentedDataset, TrainTransform, build_dataset, mean_fill
from seglab.data.base import voc_palette

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_voc_like(root: Path, count: int, seed: int = 0) -> None:
    """Write `count` 500x375-ish photo-like JPEGs (quality 90) and palette labels in the VOC layout."""
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for k in range(count):
        height, width = (375, 500) if k % 3 else (500, 375)
        coarse = rng.integers(0, 256, (height // 25 + 2, width // 25 + 2, 3)).astype(np.float32)
        img = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BICUBIC), np.float32)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        label = np.zeros((height, width), np.uint8)
        for cls in rng.integers(1, 21, 3):
            y, x = rng.integers(0, height - 60), rng.integers(0, width - 60)
            label[y : y + rng.integers(40, 200), x : x + rng.integers(40, 200)] = cls
        name = f"2009_{k:06d}"
        Image.fromarray(img).save(base / "JPEGImages" / f"{name}.jpg", quality=90)
        png = Image.fromarray(label)
        png.putpalette(voc_palette(256).reshape(-1).tolist())
        png.save(base / "SegmentationClass" / f"{name}.png")
        ids.append(name)
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")


class CommonWay:
    """The recipe as per-sample PIL transforms, the way torchvision's segmentation reference does it."""

    def __init__(self, files: list[tuple[Path, Path]], crop: int, scale_range: tuple[float, float]) -> None:
        self.files, self.crop, self.scale_range = files, crop, scale_range
        self.mean, self.std = list(MEAN), list(STD)

    def __call__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.files[index]
        image = Image.open(image_path).convert("RGB")
        target = Image.open(label_path)
        scale = random.uniform(*self.scale_range)
        size = [round(image.height * scale), round(image.width * scale)]
        image = TF.resize(image, size)
        target = TF.resize(target, size, interpolation=InterpolationMode.NEAREST)
        if random.random() < 0.5:
            image, target = TF.hflip(image), TF.hflip(target)
        pad_h, pad_w = max(self.crop - image.height, 0), max(self.crop - image.width, 0)
        if pad_h or pad_w:
            image = TF.pad(image, [0, 0, pad_w, pad_h], fill=0)
            target = TF.pad(target, [0, 0, pad_w, pad_h], fill=255)
        top, left = random.randint(0, image.height - self.crop), random.randint(0, image.width - self.crop)
        image = TF.crop(image, top, left, self.crop, self.crop)
        target = TF.crop(target, top, left, self.crop, self.crop)
        tensor = TF.normalize(TF.convert_image_dtype(TF.pil_to_tensor(image), torch.float32), self.mean, self.std)
        return tensor, torch.as_tensor(np.array(target), dtype=torch.int64)


def images_per_second(fn, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        make_voc_like(Path(tmp), args.images)
        dataset = build_dataset("voc", tmp, "train")
        augment = Augment(crop=(args.crop, args.crop), scale_range=(0.5, 2.0))
        ours = AugmentedDataset(dataset, TrainTransform(augment, dataset.ignore_index, mean_fill(MEAN)), seed=0)
        common = CommonWay([(s.image, s.label) for s in dataset.samples], args.crop, augment.scale_range)
        results: dict[str, list[float]] = {"seglab": [], "common": []}
        for epoch in range(-1, args.rounds):  # epoch -1 is the warm-up (page cache, allocator, lazy imports)
            for name, fn in (("seglab", lambda i, e=epoch + 1: ours[(e, i)]), ("common", common)):
                rate = images_per_second(fn, args.images)
                if epoch >= 0:
                    results[name].append(rate)
    median = {name: statistics.median(v) for name, v in results.items()}
    summary = {
        "images": args.images,
        "rounds": args.rounds,
        "crop": args.crop,
        "threads": 1,
        "seglab_img_per_s": round(median["seglab"], 1),
        "common_img_per_s": round(median["common"], 1),
        "ratio": round(median["seglab"] / median["common"], 2),
        "spread": {n: [round(min(v), 1), round(max(v), 1)] for n, v in results.items()},
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"train-transform throughput per worker (1 thread, {args.images} VOC-like JPEGs ~500x375, "
            f"crop {args.crop}, scale 0.5-2.0, flip; median of {args.rounds} rounds)"
        )
        for name in results:
            lo, hi = summary["spread"][name]
            print(f"  {name:<7} {median[name]:7.1f} images/s   (rounds: {lo}-{hi})")
        print(f"  ratio seglab / common: {summary['ratio']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
