"""SegmentationLoss against F.cross_entropy, the all-ignored batch, the DDP split, OHEM by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seglab.engine.losses import SegmentationLoss
from seglab.errors import ConfigError

IGNORE = 255


def batch(seed: int = 0, n: int = 2, c: int = 4, size: int = 6):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, size, size, generator=gen, requires_grad=True)
    target = torch.randint(0, c, (n, size, size), generator=gen)
    target[:, :2, :] = IGNORE
    return logits, target.to(torch.uint8)


def mean(loss_fn, logits, target):
    total, norm = loss_fn(logits, target)
    return total / norm.clamp(min=1)


def test_matches_cross_entropy_with_ignore_index():
    logits, target = batch()
    expected = F.cross_entropy(logits, target.long(), ignore_index=IGNORE)
    assert torch.allclose(mean(SegmentationLoss(4, IGNORE), logits, target), expected, rtol=1e-6)


def test_class_weights_match_weighted_cross_entropy():
    logits, target = batch(1)
    weights = [0.5, 2.0, 1.0, 3.0]
    expected = F.cross_entropy(logits, target.long(), weight=torch.tensor(weights), ignore_index=IGNORE)
    assert torch.allclose(mean(SegmentationLoss(4, IGNORE, weights), logits, target), expected, rtol=1e-6)
    with pytest.raises(ConfigError, match="--class-weights has 2 values for 4 classes"):
        SegmentationLoss(4, IGNORE, [1.0, 2.0])


@pytest.mark.parametrize("weights", [(), (1.0, 2.0, 3.0, 4.0)])
@pytest.mark.parametrize("ohem", [False, True])
def test_all_ignored_batch_gives_zero_loss_and_zero_gradients(weights, ohem):
    logits, target = batch(2)
    target[:] = IGNORE
    assert torch.isnan(F.cross_entropy(logits, target.long(), ignore_index=IGNORE))  # the trap avoided here
    loss = mean(SegmentationLoss(4, IGNORE, weights, ohem=ohem, ohem_min_kept=3), logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0


def test_sums_over_ranks_give_the_global_mean():
    """Two halves reduced as DDP does (sum of sums / sum of normalizers) equal the whole batch's mean."""
    logits, target = batch(3, n=4)
    target[0] = IGNORE  # the halves hold different numbers of valid pixels
    loss_fn = SegmentationLoss(4, IGNORE, [1.0, 2.0, 0.5, 1.0])
    halves = [loss_fn(logits[i : i + 2], target[i : i + 2]) for i in (0, 2)]
    total = sum(h[0] for h in halves) / sum(h[1] for h in halves)
    assert torch.allclose(total, mean(loss_fn, logits, target), rtol=1e-6)


def test_ohem_keeps_hard_pixels_and_at_least_min_kept():
    logits, target = batch(4)
    pixel = F.cross_entropy(logits, target.long(), ignore_index=IGNORE, reduction="none")
    valid = target != IGNORE
    prob = torch.exp(-pixel)
    hard = valid & (prob < 0.5)
    assert 3 < int(hard.sum()) < int(valid.sum())
    loss = mean(SegmentationLoss(4, IGNORE, ohem=True, ohem_thresh=0.5, ohem_min_kept=3), logits, target)
    assert torch.allclose(loss, pixel[hard].mean(), rtol=1e-6)
    # min_kept above the number of hard pixels: exactly the min_kept hardest ones are kept
    k = int(hard.sum()) + 5
    hardest = pixel[valid].sort(descending=True).values[:k]
    loss = mean(SegmentationLoss(4, IGNORE, ohem=True, ohem_thresh=0.5, ohem_min_kept=k), logits, target)
    assert torch.allclose(loss, hardest.mean(), rtol=1e-6)
    # fewer valid pixels than min_kept: all of them
    loss = mean(SegmentationLoss(4, IGNORE, ohem=True, ohem_min_kept=10_000), logits, target)
    assert torch.allclose(loss, pixel[valid].mean(), rtol=1e-6)
