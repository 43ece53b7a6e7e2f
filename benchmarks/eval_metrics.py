"""Confusion-matrix accumulation: seglab's single bincount vs torchmetrics' MulticlassConfusionMatrix.

Both accumulate the same prediction/label tensors (VOC-like: 21 classes, ignore 255) on the same
device in the same run; the script prints the time per batch of each and their ratio, and checks the
matrices are identical. torchmetrics is timed with its default input validation and without it.

    .venv/bin/python benchmarks/eval_metrics.py [--device cuda] [--batch 8] [--size 512] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from seglab.metrics import confusion_matrix, per_image_confusion

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


if __name__ == "__main__":
    main()
