"""Model complexity: parameters and GFLOPs, counted without running real compute.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-add as 2 FLOPs;
seglab reports GFLOPs = FLOPs / 1e9 (so GMACs = GFLOPs / 2). Only convolutions, matmuls and similar are
counted; elementwise ops, pooling and interpolation are not.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from seglab.models import build_model


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_gflops(model: nn.Module, size: tuple[int, int], batch: int = 1) -> float:
    """Return forward GFLOPs (2 FLOPs per multiply-add) for a batch of `size` images, on the model's device."""
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
    """Return {"params": int, "gflops": float} for one image of `size`, FLOPs counted on a meta-device copy."""
    meta = copy.deepcopy(model).to("meta")
    return {"params": count_params(model), "gflops": count_gflops(meta, size)}


def complexity_rows(basenets: Sequence[str], decoders: Sequence[str], size: int, num_classes: int) -> list[dict]:
    """Build every basenet x decoder pair on the meta device and return one row of complexity per pair."""
    rows = []
    for basenet in basenets:
        for decoder in decoders:
            with torch.device("meta"):
                model = build_model(basenet, decoder, num_classes)
            rows.append(
                {
                    "basenet": basenet,
                    "decoder": decoder,
                    "params": count_params(model),
                    "gflops": count_gflops(model, (size, size)),
                }
            )
    return rows
