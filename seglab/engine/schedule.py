"""Learning-rate schedules as a `LambdaLR` of the step: poly, cosine, step (x0.1 at 1/3 and 2/3), none.

Poly (``(1 - t)^0.9``) is DeepLab's (Chen et al., "DeepLab", TPAMI 2017); the step decay is the seed
framework's; cosine is Loshchilov & Hutter, "SGDR" (ICLR 2017) without restarts. A linear warm-up from
1/1000 of the rate multiplies any of them. The factor is a pure function of the step, so a restored
scheduler (its `last_epoch`) gives exactly the rate of an uninterrupted run.

Extending a run (`seglab train --resume RUN --iters N`, `extend_schedule`) keeps the schedule up to the old
last step and appends a restart: from the old last step to the new one the same decay runs again from the
peak rate (a warm restart as in SGDR, without a second warm-up), so every step up to the old end keeps
its rate and the losses of the extended run equal the original's there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

DECAYS = ("poly", "cosine", "step", "none")


@dataclass
class LRFactor:
    """The learning-rate multiplier at step `step` of `total` (picklable as plain data for checkpoints).

    `restarts` are the steps where an extension of the run began: each starts the decay afresh.
    """

    decay: str
    total: int
    warmup: int = 0
    power: float = 0.9
    restarts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.decay not in DECAYS:
            raise ValueError(f"--decaylr must be one of {', '.join(DECAYS)}, got {self.decay!r}")

    def __call__(self, step: int) -> float:
        start = max((r for r in self.restarts if r <= step), default=0)
        end = min((r for r in (*self.restarts, self.total) if r > start), default=self.total)
        t = min((step - start) / max(end - start, 1), 1.0)
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


def extend_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, total: int) -> None:
    """Extend the schedule of a restored scheduler to `total` steps: a restart at its old last step.

    The optimizer's current rates are set for the step the scheduler is at, since they were those of
    the old last step (0 under poly decay).
    """
    for factor in {id(f): f for f in scheduler.lr_lambdas}.values():  # one LRFactor may serve every group
        factor.restarts = [*factor.restarts, factor.total]
        factor.total = total
    step = scheduler.last_epoch
    rates = [base * f(step) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = rates  # what get_last_lr() reports; LambdaLR has no public setter
