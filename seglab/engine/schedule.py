"""Learning-rate schedules as a `LambdaLR` of the step: poly, cosine, step (x0.1 at 1/3 and 2/3), none.

Poly (``(1 - t)^0.9``) is DeepLab's (Chen et al., "DeepLab", TPAMI 2017); the step decay is the seed
framework's; cosine is Loshchilov & Hutter, "SGDR" (ICLR 2017) without restarts. A linear warm-up from
1/1000 of the rate multiplies any of them. The factor is a pure function of the step, so a restored
scheduler (its `last_epoch`) gives exactly the rate of an uninterrupted run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DECAYS = ("poly", "cosine", "step", "none")


@dataclass
class LRFactor:
    """The learning-rate multiplier at step `step` of `total` (picklable as plain data for checkpoints)."""

    decay: str
    total: int
    warmup: int = 0
    power: float = 0.9

    def __post_init__(self) -> None:
        if self.decay not in DECAYS:
            raise ValueError(f"--decaylr must be one of {', '.join(DECAYS)}, got {self.decay!r}")

    def __call__(self, step: int) -> float:
        t = min(step / max(self.total, 1), 1.0)
        if self.decay == "poly":
            factor = (1.0 - t) ** self.power
        elif self.decay == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * t))
        elif self.decay == "step":
            factor = 0.1 ** (int(t >= 1 / 3) + int(t >= 2 / 3))
        else:
            factor = 1.0
        if step < self.warmup:
            factor *= 1e-3 + (1 - 1e-3) * step / self.warmup
        return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, decay: str, total: int, warmup: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Return a LambdaLR stepping once per iteration over `total` iterations."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor(decay, total, warmup))
