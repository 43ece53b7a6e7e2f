"""Model complexity (parameters, GFLOPs) and the `seglab models` table.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-add as 2 FLOPs;
seglab reports GFLOPs = FLOPs / 1e9 (so GMACs = GFLOPs / 2). Only convolutions, matmuls and similar are
counted; elementwise ops, pooling and interpolation are not.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from seglab.models.backbones import BACKBONES, SEED_BASENETS


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_gflops(model: nn.Module, size: tuple[int, int], batch: int = 1) -> float:
    """Return forward GFLOPs (2 FLOPs per multiply-add) for a batch of `size` images, on the meta device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            model(torch.zeros(batch, 3, *size, device=device))
        return counter.get_total_flops() / 1e9
    finally:
        model.train(was_training)


def model_complexity(model: nn.Module, size: tuple[int, int] = (512, 512)) -> dict[str, float]:
    """Return {"params": int, "gflops": float} for one image of `size`."""
    return {"params": count_params(model), "gflops": count_gflops(model, size)}


def complexity_table(basenets: list[str], decoders: list[str], size: int, num_classes: int) -> list[dict]:
    """Build every FE x decoder pair on the meta device and return one row of complexity per pair."""
    from seglab.models import build_model

    rows = []
    for basenet in basenets:
        for decoder in decoders:
            with torch.device("meta"):
                model = build_model(basenet, decoder, num_classes)
            row = {"basenet": basenet, "decoder": decoder, **model_complexity(model, (size, size))}
            rows.append(row)
    return rows


def format_table(rows: list[dict], size: int) -> str:
    """Render complexity rows as a Markdown table."""
    lines = [
        f"| basenet | decoder | params (M) | GFLOPs @ {size}x{size} |",
        "|---|---|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['basenet']} | {row['decoder']} | {row['params'] / 1e6:.2f} | {row['gflops']:.1f} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `seglab models`."""
    parser.add_argument("--size", type=int, default=512, help="square input size for GFLOPs (default 512)")
    parser.add_argument("--basenets", default=",".join(SEED_BASENETS), help="comma-separated FEs (default: seed FEs)")
    parser.add_argument("--decoders", default="fcn8s", help="comma-separated decoders (default fcn8s)")
    parser.add_argument("--num-classes", type=int, default=21, help="classes of the head (default 21, VOC)")
    parser.add_argument("--list", action="store_true", help="only list registered FEs and decoders")


def main(args: argparse.Namespace) -> int:
    """Print the registries and the params / GFLOPs table."""
    from seglab.models import DECODERS

    print(
        "basenets:",
        ", ".join(
            name + (f" (alias {', '.join(BACKBONES.aliases(name))})" if BACKBONES.aliases(name) else "")
            for name in BACKBONES.names()
        ),
        "+ any timm model with features_only",
    )
    print("decoders:", ", ".join(DECODERS.names()))
    if args.list:
        return 0
    rows = complexity_table(args.basenets.split(","), args.decoders.split(","), args.size, args.num_classes)
    print()
    print(format_table(rows, args.size))
    print("\nGFLOPs count 2 FLOPs per multiply-add (torch.utils.flop_counter); GMACs = GFLOPs / 2.")
    return 0
