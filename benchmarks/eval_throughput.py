"""Evaluation throughput: `seglab test`'s loop vs a plain loop in the style of torchvision's reference
`evaluate`, same model, same images, same run; and the peak memory of each.

Both evaluate one model (random weights, 21 classes) on the same VOC-like val set written to a temp folder
(JPEGs of 500x375 and 375x500, palette labels, instance PNGs), decoded by DataLoader workers:

- seglab: `seglab.engine.evaluate.evaluate`, the loop `seglab test` runs, with its defaults: batches of
  --batch-size images of one size, uint8 images through the loader and normalization on the device,
  padding to the basenet's stride, and everything the report needs per image (class counts, object
  records, Boundary IoU, the worst-image gallery); fp32 on CPU, bf16 autocast on CUDA.
- seglab fast: the same with `seglab test --channels-last --amp bf16` (bf16 autocast on the CPU too, which
  pays off on CPUs with native bf16, e.g. AVX512-BF16 or AMX; the predictions are those of bf16 logits).
- plain: the loop of torchvision's references/segmentation `evaluate`: batch 1, PIL -> float tensor and
  Normalize in the DataLoader worker, `model(image)`, argmax, and a confusion matrix from one
  `torch.bincount` over the valid pixels. (The reference also resizes every image to 520 px first; both
  run at the images' own size here, so that they do the same inference.)

Rounds alternate between the two; the figure is the median images/s. Peak memory is measured for each in a
fresh child process: the growth of peak RSS during the evaluation on CPU (Linux /proc, the peak reset
first), `torch.cuda.max_memory_allocated` on CUDA.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_throughput.py --device cpu --batch-size 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from seglab.data import build_dataset
from seglab.data.base import voc_palette
from seglab.engine.evaluate import evaluate
from seglab.engine.setup import AMP_DTYPES, resolve_amp
from seglab.models import build_model

NUM_CLASSES, IGNORE = 21, 255
CONTENDERS = ("seglab", "seglab fast", "plain")


def make_voc_val(root: Path, count: int, seed: int = 0) -> None:
    """Write `count` VOC-like JPEGs (500x375 or 375x500), palette labels and instance PNGs as split `val`."""
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for k in range(count):
        height, width = (375, 500) if k % 3 else (500, 375)
        coarse = rng.integers(0, 256, (height // 25 + 2, width // 25 + 2, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        label, instances = np.zeros((height, width), np.uint8), np.zeros((height, width), np.uint8)
        for obj, cls in enumerate(rng.integers(1, NUM_CLASSES, 3), start=1):
            y, x = rng.integers(0, height - 60), rng.integers(0, width - 60)
            box = (slice(y, y + rng.integers(40, 200)), slice(x, x + rng.integers(40, 200)))
            label[box], instances[box] = cls, obj
        label[:, :3] = IGNORE
        name = f"2010_{k:06d}"
        Image.fromarray(img).save(base / "JPEGImages" / f"{name}.jpg", quality=90)
        for array, folder in ((label, "SegmentationClass"), (instances, "SegmentationObject")):
            png = Image.fromarray(array)
            png.putpalette(voc_palette(256).reshape(-1).tolist())
            png.save(base / folder / f"{name}.png")
        ids.append(name)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")


class PlainSamples(torch.utils.data.Dataset):
    """The reference's eval transform: PIL image -> float tensor -> Normalize on the CPU; label -> int64."""

    def __init__(self, files: list[tuple[Path, Path]], mean, std) -> None:
        self.files, self.mean, self.std = files, list(mean), list(std)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.files[index]
        image = TF.convert_image_dtype(TF.pil_to_tensor(Image.open(image_path).convert("RGB")), torch.float32)
        target = torch.as_tensor(np.array(Image.open(label_path)), dtype=torch.int64)
        return TF.normalize(image, self.mean, self.std), target


@torch.inference_mode()
def plain_evaluate(model: torch.nn.Module, loader, device: torch.device) -> torch.Tensor:
    """The reference loop: one image at a time, argmax, a confusion matrix over the valid pixels."""
    model.eval()
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64, device=device)
    for image, target in loader:
        image, target = image.to(device), target.to(device)
        pred = model(image).argmax(1).flatten()
        target = target.flatten()
        valid = (target >= 0) & (target < NUM_CLASSES)
        cm += torch.bincount(NUM_CLASSES * target[valid] + pred[valid], minlength=NUM_CLASSES**2).view(
            NUM_CLASSES, NUM_CLASSES
        )
    return cm.cpu()


class Setup:
    """The model, the seglab dataset and the plain loader of one run of the benchmark."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.device = torch.device(args.device)
        torch.manual_seed(0)
        self.model = build_model(args.basenet, args.decoder, NUM_CLASSES).to(self.device).eval()
        with torch.no_grad():  # varied predictions: FCN's score layers start at zero
            for p in self.model.decoder.parameters():
                p.normal_(0, 0.05)
        self.dataset = build_dataset("voc", root, "val")
        files = [(s.image, s.label) for s in self.dataset.samples]
        plain = PlainSamples(files, self.model.input_mean, self.model.input_std)
        self.loader = torch.utils.data.DataLoader(plain, batch_size=1, num_workers=args.workers)
        self.args = args

        self.fast = build_model(args.basenet, args.decoder, NUM_CLASSES).to(self.device).eval()
        self.fast.load_state_dict(self.model.state_dict())
        self.fast.to(memory_format=torch.channels_last)

    def run(self, name: str) -> None:
        if name == "plain":
            plain_evaluate(self.model, self.loader, self.device)
            return
        model, amp = (self.model, AMP_DTYPES[resolve_amp("auto", self.device)])
        if name == "seglab fast":
            model, amp = self.fast, torch.bfloat16
        evaluate(model, self.dataset, batch_size=self.args.batch_size, workers=self.args.workers, amp_dtype=amp)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_kib(field: str) -> int:
    """Return a /proc/self/status memory field (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory(args: argparse.Namespace, root: Path, name: str) -> float:
    """Evaluate once with `name` (after a warm-up) and return the peak memory it added, in MiB."""
    setup = Setup(args, root)
    setup.run(name)  # warm-up: lazy initialisation and allocator caches are not the loop's memory
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)
        base = torch.cuda.memory_allocated(setup.device)
        setup.run(name)
        return (torch.cuda.max_memory_allocated(setup.device) - base) / 2**20
    base = rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    setup.run(name)
    return (rss_kib("VmHWM") - base) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--basenet", default="mobilenet_v2")
    parser.add_argument("--decoder", default="fcn8s")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--root", default="", help=argparse.SUPPRESS)  # the child processes' data folder
    parser.add_argument("--memory-of", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:  # a child process: one measurement, as JSON
        print(json.dumps({"peak_mib": peak_memory(args, Path(args.root), args.memory_of.replace("_", " "))}))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        make_voc_val(Path(tmp), args.images)
        setup = Setup(args, Path(tmp))
        rates: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        for round_ in range(-1, args.rounds):  # round -1 warms up (page cache, allocator, lazy imports)
            for name in CONTENDERS if round_ % 2 else CONTENDERS[::-1]:
                _sync(setup.device)
                start = time.perf_counter()
                setup.run(name)
                _sync(setup.device)
                if round_ >= 0:
                    rates[name].append(args.images / (time.perf_counter() - start))
        passed = list(argv if argv is not None else sys.argv[1:])
        memory = {}
        for name in rates:
            child = [sys.executable, __file__, *passed, "--root", tmp, "--memory-of", name.replace(" ", "_")]
            memory[name] = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
    median = {name: statistics.median(v) for name, v in rates.items()}
    print(
        f"{args.basenet} x {args.decoder}, {NUM_CLASSES} classes, {args.images} VOC-like images (500x375, 375x500), "
        f"device {args.device} ({torch.get_num_threads()} threads), {args.workers} loader worker(s); "
        f"median of {args.rounds} rounds"
    )
    labels = {
        "seglab": f"seglab test (batch {args.batch_size})",
        "seglab fast": f"seglab test (batch {args.batch_size}, channels-last, bf16)",
        "plain": "plain loop (batch 1, fp32)",
    }
    for name in CONTENDERS:
        spread = f"{min(rates[name]):.2f}-{max(rates[name]):.2f}"
        print(
            f"  {labels[name]:<44} {median[name]:6.2f} images/s  (rounds {spread})  "
            f"peak memory +{memory[name]['peak_mib']:.0f} MiB"
        )
    for name in ("seglab", "seglab fast"):
        print(f"  ratio {name} / plain: {median[name] / median['plain']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
