"""Decoder speed: seglab's DeepLabV3-R50, LR-ASPP-MobileNetV3, LinkNet-R18, U-Net-R34, FPN-R34, UPerNet and
SegFormer against their references.

References: torchvision's `deeplabv3_resnet50` (output stride 8, no aux head) and
`lraspp_mobilenet_v3_large` (output stride 16), segmentation_models_pytorch's `Linknet("resnet18")`,
`Unet("resnet34")`, `FPN("resnet34")`, `UPerNet("tu-convnext_atto")` and `Segformer("tu-convnext_atto")`
(the last four the same networks as seglab's, tests/test_parity.py).
Each pair runs on the same input, device and thread count in one process; the two models alternate
within every round (so drifting machine load hits both alike); the median and the best (minimum, as
`timeit` recommends on a loaded machine) per model are reported.
"forward" is eval mode under `torch.no_grad()`; "fwd+bwd" is train mode, forward plus backward of the
mean logit. The ratio is seglab / reference (<= 1.02 is the goal). On the CPU the default clock is the
process's CPU time (`time.process_time`), which other processes on a shared machine barely disturb;
`--clock wall` measures latency instead (the only clock on CUDA).

    .venv/bin/python benchmarks/models.py [--device cuda] [--size 256] [--batch 2] [--rounds 5] [--threads 1]
        [--clock cpu|wall] [--pairs NAME ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import segmentation_models_pytorch as smp
import torch
import torchvision
from torch import Tensor, nn

import seglab

NUM_CLASSES = 21


def pairs() -> dict[str, tuple[nn.Module, nn.Module, Callable[[object], Tensor]]]:
    """name -> (seglab model, reference model, function extracting the logits from the reference's output)."""
    tv = torchvision.models.segmentation
    return {
        "deeplabv3-resnet50 (os 8)": (
            seglab.build_model("resnet50", "deeplabv3", NUM_CLASSES, output_stride=8),
            tv.deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False, num_classes=NUM_CLASSES),
            lambda out: out["out"],
        ),
        "lraspp-mobilenet_v3_large (os 16)": (
            seglab.build_model("mobilenet_v3_large", "lraspp", NUM_CLASSES, output_stride=16),
            tv.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES),
            lambda out: out["out"],
        ),
        "linknet-resnet18 vs smp": (
            seglab.build_model("resnet18", "linknet", NUM_CLASSES),
            smp.Linknet("resnet18", encoder_weights=None, classes=NUM_CLASSES),
            lambda out: out,
        ),
        "unet-resnet34 vs smp": (
            seglab.build_model("resnet34", "unet", NUM_CLASSES),
            smp.Unet("resnet34", encoder_weights=None, classes=NUM_CLASSES),
            lambda out: out,
        ),
        "fpn-resnet34 vs smp": (
            seglab.build_model("resnet34", "fpn", NUM_CLASSES),
            smp.FPN("resnet34", encoder_weights=None, classes=NUM_CLASSES),
            lambda out: out,
        ),
        "upernet-convnext_atto vs smp": (
            seglab.build_model("convnext_atto", "upernet", NUM_CLASSES),
            smp.UPerNet("tu-convnext_atto", encoder_weights=None, classes=NUM_CLASSES),
            lambda out: out,
        ),
        "segformer-convnext_atto vs smp": (
            seglab.build_model("convnext_atto", "segformer", NUM_CLASSES),
            smp.Segformer("tu-convnext_atto", encoder_weights=None, classes=NUM_CLASSES),
            lambda out: out,
        ),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(model: nn.Module, logits: Callable[[object], Tensor], x: Tensor, backward: bool) -> None:
    """One forward (no_grad, eval) or one forward + backward (train)."""
    if backward:
        model.train()
        model.zero_grad(set_to_none=True)
        logits(model(x)).mean().backward()
    else:
        model.eval()
        with torch.no_grad():
            logits(model(x))


def time_pair(
    ours: nn.Module,
    reference: nn.Module,
    logits: Callable,
    x: Tensor,
    backward: bool,
    rounds: int,
    clock: Callable[[], float],
) -> dict[str, list[float]]:
    """Seconds per step of each round for "ours" and "reference", alternating which goes first."""
    runs = {"ours": (ours, lambda out: out), "reference": (reference, logits)}
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    order = ["ours", "reference"]
    for _ in range(2):  # warm-up: allocator, cuDNN algorithm choice
        for key in order:
            step(*runs[key], x, backward)
    for round_index in range(rounds):
        for key in order if round_index % 2 == 0 else order[::-1]:
            sync(x.device)
            start = clock()
            step(*runs[key], x, backward)
            sync(x.device)
            times[key].append(clock() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=256, help="square input size (default 256)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (>= 2: BN on the pooled branches)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per model and mode (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (default 1)")
    parser.add_argument("--clock", choices=("cpu", "wall"), help="cpu: process CPU time (CPU default); wall")
    parser.add_argument("--pairs", nargs="+", metavar="NAME", help="only the pairs whose name starts with NAME")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock_name = args.clock or ("wall" if device.type == "cuda" else "cpu")
    if device.type == "cuda" and clock_name == "cpu":
        parser.error("--clock cpu does not measure GPU work; use --clock wall with --device cuda")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    print(
        f"device {device}, threads {torch.get_num_threads()}, input {tuple(x.shape)}, rounds {args.rounds}, "
        f"clock {clock_name}"
    )
    print("| pair | mode | seglab ms (median / best) | reference ms (median / best) | ratio (median / best) |")
    print("|---|---|---:|---:|---:|")
    for name, (ours, reference, logits) in pairs().items():
        if args.pairs and not name.startswith(tuple(args.pairs)):
            continue
        ours.to(device)
        reference.to(device)
        for backward in (False, True):
            times = time_pair(ours, reference, logits, x, backward, args.rounds, clock)
            med = {k: statistics.median(v) for k, v in times.items()}
            best = {k: min(v) for k, v in times.items()}
            cells = [f"{med[k] * 1e3:.1f} / {best[k] * 1e3:.1f}" for k in ("ours", "reference")]
            ratio = f"{med['ours'] / med['reference']:.3f} / {best['ours'] / best['reference']:.3f}"
            mode = "fwd+bwd" if backward else "forward"
            print(f"| {name} | {mode} | {cells[0]} | {cells[1]} | {ratio} |", flush=True)
        ours.cpu()
        reference.cpu()


if __name__ == "__main__":
    main()
