"""Learning-rate schedules against torch.optim.lr_scheduler's own classes."""

from __future__ import annotations

import math

import pytest
import torch

from seglab.engine.schedule import LRFactor, build_scheduler

TOTAL = 30


def rates(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


@pytest.mark.parametrize(
    ("decay", "reference"),
    [
        ("poly", lambda opt: torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=TOTAL, power=0.9)),
        ("cosine", lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=TOTAL)),
        ("step", lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, [TOTAL // 3, 2 * TOTAL // 3], gamma=0.1)),
        ("none", lambda opt: torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)),
    ],
)
def test_decay_matches_torch_scheduler(decay, reference):
    ours = rates(build_scheduler(optimizer(), decay, TOTAL), TOTAL)
    theirs = rates(reference(optimizer()), TOTAL)
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)


def test_warmup_is_linear_from_a_thousandth():
    factor = LRFactor("none", TOTAL, warmup=10)
    assert factor(0) == pytest.approx(1e-3)
    assert factor(5) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert factor(10) == 1.0
    assert LRFactor("poly", TOTAL, warmup=10)(5) == pytest.approx(factor(5) * (1 - 5 / TOTAL) ** 0.9)


def test_restored_scheduler_continues_exactly():
    first = build_scheduler(optimizer(), "cosine", TOTAL, warmup=3)
    head = rates(first, 7)
    resumed = build_scheduler(optimizer(), "cosine", TOTAL, warmup=3)
    state = first.state_dict()
    resumed.load_state_dict(state)
    resumed.optimizer.param_groups[0]["lr"] = first.optimizer.param_groups[0]["lr"]
    assert head[-1] == pytest.approx(0.1 * LRFactor("cosine", TOTAL, 3)(6))
    assert rates(resumed, 5) == rates(first, 5)
    assert math.isclose(resumed.get_last_lr()[0], first.get_last_lr()[0])


def test_unknown_decay_is_an_error():
    with pytest.raises(ValueError, match="--decaylr must be one of poly, cosine, step, none, got 'linear'"):
        build_scheduler(optimizer(), "linear", TOTAL)
