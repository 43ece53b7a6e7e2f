"""Confusion-matrix accumulation: seglab's single bincount vs torchmetrics' MulticlassConfusionMatrix; and
Boundary IoU: seglab's one pass per class map vs the per-class erosion of the paper's recipe.

Both accumulate the same prediction/label tensors (VOC-like: 21 classes, ignore 255) on the same
device in the same run; the script prints the time per batch of each and their ratio, and checks the
matrices are identical. torchmetrics is timed with its default input validation and without it.
Boundary IoU is timed on one VOC-sized image (375x500, band width 13 px) of blocky labels, against
scipy.ndimage.binary_erosion per class (the recipe of Cheng et al.'s reference code: each class mask
minus its erosion), with identical counts checked.

    .venv/bin/python benchmarks/eval_metrics.py [--device cuda] [--batch 8] [--size 512] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage
from torchmetrics.classification import MulticlassConfusionMatrix

from seglab.metrics import band_width, boundary_stats, confusion_matrix, per_image_confusion

NUM_CLASSES, IGNORE = 21, 255


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(contenders: dict, device: torch.device, repeats: int) -> dict[str, float]:
    """Return the median seconds per call of each contender, calls interleaved so load changes hit all alike."""
    for fn in contenders.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.size, args.size)
    target = torch.randint(0, NUM_CLASSES, shape, generator=g)
    target[torch.rand(shape, generator=g) < 0.05] = IGNORE
    pred = torch.where(
        torch.rand(shape, generator=g) < 0.7,
        target.clamp(max=NUM_CLASSES - 1),
        torch.randint(0, NUM_CLASSES, shape, generator=g),
    )
    target, pred = target.to(device), pred.to(device)

    ours = confusion_matrix(pred, target, NUM_CLASSES, IGNORE)
    tm = MulticlassConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE).to(device)
    tm_fast = MulticlassConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE, validate_args=False).to(device)
    assert torch.equal(ours, tm(pred, target).long()), "matrices differ"
    assert torch.equal(per_image_confusion(pred, target, NUM_CLASSES, IGNORE).sum(0), ours)

    def run_tm(metric: MulticlassConfusionMatrix) -> None:
        metric.reset()
        metric.update(pred, target)
        metric.compute()

    t = timed(
        {
            "ours": lambda: confusion_matrix(pred, target, NUM_CLASSES, IGNORE),
            "per_image": lambda: per_image_confusion(pred, target, NUM_CLASSES, IGNORE),
            "tm": lambda: run_tm(tm),
            "tm_fast": lambda: run_tm(tm_fast),
        },
        device,
        args.repeats,
    )
    t_ours, t_per_image, t_tm, t_tm_fast = t["ours"], t["per_image"], t["tm"], t["tm_fast"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"device {name}, labels {target.dtype}, batch {args.batch} x {args.size}x{args.size}, {NUM_CLASSES} classes, "
        f"median of {args.repeats}"
    )
    print(f"seglab confusion_matrix           {1e3 * t_ours:8.2f} ms")
    print(f"seglab per_image_confusion        {1e3 * t_per_image:8.2f} ms")
    print(f"torchmetrics (validate_args=True) {1e3 * t_tm:8.2f} ms   ratio {t_tm / t_ours:.2f}x")
    print(f"torchmetrics (validate_args=False){1e3 * t_tm_fast:8.2f} ms   ratio {t_tm_fast / t_ours:.2f}x")

    boundary(args.repeats)


def erosion_boundary(pred: np.ndarray, target: np.ndarray, d: int) -> np.ndarray:
    """Per-class band intersection and union with scipy erosions, one class mask at a time (the peer)."""
    out = np.zeros((2, NUM_CLASSES), np.int64)
    valid = target != IGNORE
    for c in range(NUM_CLASSES):
        bands = []
        for labels in (target, pred):
            mask = labels == c
            eroded = ndimage.binary_erosion(mask, np.ones((2 * d + 1, 2 * d + 1), bool), border_value=0)
            bands.append(mask & ~eroded & valid)
        out[:, c] = (bands[0] & bands[1]).sum(), (bands[0] | bands[1]).sum()
    return out


def boundary(repeats: int) -> None:
    """Time Boundary IoU of one 375x500 image, seglab against per-class erosion, on the CPU."""
    g = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, NUM_CLASSES, (1, 375 // 25 + 1, 500 // 25 + 1), generator=g)
    target = blocks.repeat_interleave(25, 1).repeat_interleave(25, 2)[:, :375, :500].contiguous()
    target[:, :, :3] = IGNORE
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.1, (target + 1) % NUM_CLASSES, target)
    d = band_width(375, 500)
    ours = boundary_stats(pred, target, NUM_CLASSES, IGNORE)
    theirs = erosion_boundary(pred[0].numpy(), target[0].numpy(), d)
    assert np.array_equal(ours.numpy(), theirs), "boundary counts differ"
    t = timed(
        {
            "ours": lambda: boundary_stats(pred, target, NUM_CLASSES, IGNORE),
            "erosion": lambda: erosion_boundary(pred[0].numpy(), target[0].numpy(), d),
        },
        torch.device("cpu"),
        max(3, repeats // 4),
    )
    print(f"Boundary IoU, 1 x 375x500, {NUM_CLASSES} classes, band {d} px (cpu, {torch.get_num_threads()} threads)")
    print(f"seglab boundary_stats             {1e3 * t['ours']:8.2f} ms")
    print(f"per-class scipy erosion           {1e3 * t['erosion']:8.2f} ms   ratio {t['erosion'] / t['ours']:.2f}x")


if __name__ == "__main__":
    main()
