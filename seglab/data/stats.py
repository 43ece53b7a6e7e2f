"""`seglab data stats`: class pixel frequencies and object sizes of a dataset split.

Pixel counts per class give class-balancing weights: median frequency balancing (Eigen & Fergus,
"Predicting Depth, Surface Normals and Semantic Labels with a Common Multi-Scale Convolutional
Architecture", ICCV 2015): w_c = median_k(f_k) / f_c, with f_c = pixels of c / pixels of the images
where c appears. Object sizes come from instance masks (VOC SegmentationObject, SBD inst,
Cityscapes instanceIds, the synthetic set): each instance's area in pixels and its class (the
majority label of its pixels), binned as COCO does (small < 32^2 <= medium < 96^2 <= large) and
in powers of two.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from tqdm import tqdm

from seglab.data.base import SegmentationDataset
from seglab.data.check import load_label

SIZE_BINS = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, math.inf)}


def instance_areas(instances: torch.Tensor, label: torch.Tensor, num_classes: int) -> list[tuple[int, int]]:
    """Return (class, area in pixels) of each instance id > 0; pixels labelled ignore are not counted."""
    ids = instances.reshape(-1).long()
    classes = label.reshape(-1).long()
    keep = (ids > 0) & (classes < num_classes)
    if not keep.any():
        return []
    uniq, inverse = torch.unique(ids[keep], return_inverse=True)
    table = torch.zeros(len(uniq), num_classes, dtype=torch.int64)
    table.index_put_((inverse, classes[keep]), torch.ones_like(inverse), accumulate=True)
    return [(int(c), int(a)) for c, a in zip(table.argmax(1), table.sum(1), strict=True)]


def dataset_stats(dataset: SegmentationDataset, limit: int | None = None) -> dict:
    """Return pixel counts, frequencies and median-frequency weights per class, and object-size histograms."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    k = dataset.num_classes
    pixels = np.zeros(k, dtype=np.int64)
    present_pixels = np.zeros(k, dtype=np.int64)  # pixels of the images in which the class appears
    images_with = np.zeros(k, dtype=np.int64)
    ignored = 0
    objects: list[tuple[int, int]] = []
    for index in tqdm(range(count), desc="stats", unit="sample", disable=not sys.stderr.isatty()):
        label = load_label(dataset, index)
        hist = torch.bincount(label.reshape(-1).long(), minlength=256).numpy()
        pixels += hist[:k]
        ignored += int(hist[k:].sum())
        present = hist[:k] > 0
        images_with += present
        present_pixels[present] += label.numel()
        if dataset.has_instances:
            objects += instance_areas(dataset.load_instances(index), label, k)
    total = int(pixels.sum())
    freq = pixels / max(total, 1)
    image_freq = np.divide(pixels, present_pixels, out=np.zeros(k), where=present_pixels > 0)
    median = float(np.median(image_freq[image_freq > 0])) if (image_freq > 0).any() else 0.0
    weights = np.divide(median, image_freq, out=np.zeros(k), where=image_freq > 0)
    classes = [
        {
            "id": c,
            "name": dataset.classes[c],
            "pixels": int(pixels[c]),
            "frequency": float(freq[c]),
            "images": int(images_with[c]),
            "median_freq_weight": float(weights[c]),
        }
        for c in range(k)
    ]
    result = {
        "dataset": dataset.describe(),
        "images": count,
        "pixels": total,
        "ignored_pixels": ignored,
        "classes": classes,
    }
    if dataset.has_instances:
        result["objects"] = object_histograms(objects, dataset.classes)
    return result


def object_histograms(objects: list[tuple[int, int]], class_names: tuple[str, ...]) -> dict:
    """Return object counts per COCO size bin (overall and per class) and a log2 area histogram."""
    areas = np.array([a for _, a in objects], dtype=np.int64)
    classes = np.array([c for c, _ in objects], dtype=np.int64)

    def bins(mask: np.ndarray) -> dict[str, int]:
        return {name: int(((areas >= lo) & (areas < hi) & mask).sum()) for name, (lo, hi) in SIZE_BINS.items()}

    everything = np.ones(len(areas), dtype=bool)
    log2 = np.floor(np.log2(np.maximum(areas, 1))).astype(int) if len(areas) else np.array([], dtype=int)
    edges = {name: [lo, None if hi == math.inf else hi] for name, (lo, hi) in SIZE_BINS.items()}
    return {
        "count": len(objects),
        "bins": edges,
        "by_size": bins(everything),
        "by_class": {class_names[c]: bins(classes == c) for c in sorted(set(classes.tolist()))},
        "log2_area_histogram": {f"[2^{e}, 2^{e + 1})": int((log2 == e).sum()) for e in sorted(set(log2.tolist()))},
    }


def format_stats(stats: dict) -> str:
    """Return the stats as a text table."""
    lines = [
        f"{stats['dataset']}: {stats['images']} images, {stats['pixels']} labelled pixels, "
        f"{stats['ignored_pixels']} ignored",
        f"{'id':>3} {'class':<22}{'pixels':>14}{'freq':>9}{'images':>8}{'mfb weight':>12}",
    ]
    for c in stats["classes"]:
        lines.append(
            f"{c['id']:>3} {c['name'][:21]:<22}{c['pixels']:>14}{c['frequency']:>9.4f}{c['images']:>8}"
            f"{c['median_freq_weight']:>12.3f}"
        )
    if "objects" in stats:
        objects = stats["objects"]
        sizes = ", ".join(f"{name} {n}" for name, n in objects["by_size"].items())
        lines.append(f"objects: {objects['count']} ({sizes}; small < 32^2 <= medium < 96^2 px <= large)")
        for name, bins in objects["by_class"].items():
            lines.append(f"    {name[:21]:<22}" + "".join(f"{k} {v:<8}" for k, v in bins.items()))
    return "\n".join(lines)
