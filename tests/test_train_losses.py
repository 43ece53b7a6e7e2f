"""SegmentationLoss against F.cross_entropy, the all-ignored batch, the DDP split, OHEM by hand; Dice, focal and
Lovász-softmax against smp's losses and reference formulas, with the ignore index and class weights; the
`--loss` grammar and the objective's weighted terms."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from seglab.config import TrainConfig, parse_loss
from seglab.engine.losses import DiceLoss, FocalLoss, LovaszLoss, SegmentationLoss, build_objective
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


# --- Dice, focal, Lovász-softmax and weighted sums: against smp's losses, reference formulas, DDP splits ---

WEIGHTS = [0.5, 2.0, 1.0, 3.0]


def smp_losses():
    return pytest.importorskip("segmentation_models_pytorch").losses


def test_dice_is_smps_dice_per_image_averaged():
    logits, target = batch(5, n=3)
    smp_dice = smp_losses().DiceLoss("multiclass", ignore_index=IGNORE)
    expected = torch.stack([smp_dice(logits[i : i + 1], target[i : i + 1].long()) for i in range(3)]).mean()
    assert torch.allclose(mean(DiceLoss(4, IGNORE), logits, target), expected, rtol=1e-6)


def test_dice_by_hand_with_class_weights():
    """One 1x3 image, classes {0, 1} present, class 2 absent, the third pixel ignored."""
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).T.reshape(1, 2, 1, 3)
    logits = torch.cat([logits, torch.zeros(1, 1, 1, 3)], 1)  # 3 classes
    target = torch.tensor([[[0, 1, IGNORE]]])
    p = logits.softmax(1)[0, :, 0, :2]  # the two valid pixels
    dice0 = 2 * p[0, 0] / (p[0].sum() + 1)
    dice1 = 2 * p[1, 1] / (p[1].sum() + 1)
    weights = (1.0, 2.0, 4.0)
    expected = (weights[0] * (1 - dice0) + weights[1] * (1 - dice1)) / sum(weights)  # absent class 2 counts 0
    assert torch.allclose(mean(DiceLoss(3, IGNORE, weights), logits, target), expected, rtol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_focal_is_smps_multiclass_focal(gamma, weights):
    logits, target = batch(6)
    expected = smp_losses().FocalLoss("multiclass", gamma=gamma, ignore_index=IGNORE, class_weights=weights)(
        logits, target.long()
    )
    ours = mean(FocalLoss(4, IGNORE, weights or (), gamma), logits, target)
    assert torch.allclose(ours, expected, rtol=1e-5)


def test_focal_is_torchvisions_sigmoid_focal_loss_per_class():
    """Lin et al.'s sigmoid focal loss (torchvision's, alpha off) on one-hot targets, averaged over the classes
    and the valid pixels."""
    logits, target = batch(7)
    valid = target != IGNORE
    onehot = F.one_hot(torch.where(valid, target.long(), 0), 4).permute(0, 3, 1, 2).float()
    per_class = sigmoid_focal_loss(logits, onehot, alpha=-1, gamma=2.0, reduction="none")
    expected = per_class.mean(1)[valid].mean()
    assert torch.allclose(mean(FocalLoss(4, IGNORE), logits, target), expected, rtol=1e-5)
    # gamma 0: the per-class sigmoid cross-entropy
    bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").mean(1)[valid].mean()
    assert torch.allclose(mean(FocalLoss(4, IGNORE, gamma=0.0), logits, target), bce, rtol=1e-5)


def test_lovasz_is_smps_per_image_lovasz_softmax():
    logits, target = batch(8, n=3)
    expected = smp_losses().LovaszLoss("multiclass", per_image=True, ignore_index=IGNORE)(logits, target.long())
    assert torch.allclose(mean(LovaszLoss(4, IGNORE), logits, target), expected, rtol=1e-5)


def test_lovasz_of_a_perfect_and_a_hard_prediction_by_hand():
    """A certain, right prediction has loss 0. Predicting class 1 at both pixels of a [0, 1] image: class 0's
    errors sorted are (1, 0) with Lovász gradient (1, 0): loss 1; class 1's errors (1 at the background pixel,
    0) have gradient (1/2, 1/2): loss 1/2; the mean over the present classes is 3/4."""
    target = torch.tensor([[[0, 1]]])
    sure = torch.tensor([[[[50.0, -50.0]], [[-50.0, 50.0]]]])
    assert mean(LovaszLoss(2, IGNORE), sure, target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = torch.tensor([[[[-50.0, -50.0]], [[50.0, 50.0]]]])  # p(class 1) = 1 at both pixels
    assert mean(LovaszLoss(2, IGNORE), wrong, target).item() == pytest.approx(0.75, abs=1e-6)


def test_lovasz_class_weights_weight_the_mean_over_present_classes():
    logits, target = batch(9, n=1)
    plain = LovaszLoss(4, IGNORE)
    classes = torch.unique(target[target != IGNORE].long())
    per_class = []
    for c in classes:
        keep = torch.zeros(4)
        keep[c] = 1.0
        per_class.append(mean(LovaszLoss(4, IGNORE, tuple(keep.tolist())), logits, target))
    weights = torch.tensor(WEIGHTS)[classes]
    expected = (torch.stack(per_class) * weights).sum() / weights.sum()
    assert torch.allclose(mean(LovaszLoss(4, IGNORE, WEIGHTS), logits, target), expected, rtol=1e-5)
    assert not torch.allclose(mean(plain, logits, target), expected)


LOSSES = {
    "dice": lambda weights: DiceLoss(4, IGNORE, weights),
    "focal": lambda weights: FocalLoss(4, IGNORE, weights),
    "lovasz": lambda weights: LovaszLoss(4, IGNORE, weights),
}


@pytest.mark.parametrize("weights", [(), tuple(WEIGHTS)])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_new_losses_give_zero_on_an_all_ignored_batch(name, weights):
    logits, target = batch(10)
    target[:] = IGNORE
    loss = mean(LOSSES[name](weights), logits, target)
    loss.backward()
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_new_losses_sum_exactly_over_ranks(name):
    """Two halves reduced as DDP does (sum of sums / sum of normalizers) equal the whole batch's value; one half
    holds an all-ignored image, which counts for nothing."""
    logits, target = batch(11, n=4)
    target[0] = IGNORE
    loss_fn = LOSSES[name](tuple(WEIGHTS))
    halves = [loss_fn(logits[i : i + 2], target[i : i + 2]) for i in (0, 2)]
    total = sum(h[0] for h in halves) / sum(h[1] for h in halves)
    assert torch.allclose(total, mean(loss_fn, logits, target), rtol=1e-6)


def test_class_weights_and_the_ignore_index_reach_every_loss():
    logits, target = batch(12)
    for name, make in LOSSES.items():
        plain, weighted = mean(make(()), logits, target), mean(make(tuple(WEIGHTS)), logits, target)
        assert not torch.allclose(plain, weighted), name
        changed = logits.detach().clone()
        changed[:, :, :2, :] += 5 * torch.randn_like(changed[:, :, :2, :])  # the ignored rows only
        assert torch.allclose(mean(make(()), changed, target), plain, rtol=1e-6), name


def test_loss_spec_grammar():
    assert parse_loss("ce") == [("ce", 1.0)]
    assert parse_loss("ce+dice") == [("ce", 1.0), ("dice", 1.0)]
    assert parse_loss("0.7*ohem + 0.3*lovasz") == [("ohem", 0.7), ("lovasz", 0.3)]
    hint = "give one of ce, ohem, dice, focal, lovasz or a sum of them with optional weights, e.g. ce+dice"
    for spec, problem in [
        ("ce+dise", "unknown term 'dise'"),
        ("ce+ce", "'ce' appears twice"),
        ("-1*dice", "the weight '-1' of 'dice' is not a positive number"),
        ("x*dice", "the weight 'x' of 'dice' is not a positive number"),
    ]:
        with pytest.raises(ConfigError, match=f"^{re.escape(f'--loss {spec!r}: {problem}; {hint}')}"):
            parse_loss(spec)
    with pytest.raises(ConfigError, match="unknown term 'dise'"):
        TrainConfig(loss="ce+dise")


def test_objective_weighs_each_term_and_the_aux_head():
    logits, target = batch(13)
    aux = logits.detach() * 0.5
    objective = build_objective("ce+0.5*dice", 4, IGNORE, aux_weight=0.4)
    assert objective.names == ["ce", "dice", "aux_ce", "aux_dice"]
    sums, norms = objective((logits, aux), target)
    ce, dice = SegmentationLoss(4, IGNORE), DiceLoss(4, IGNORE)
    expected = [ce(logits, target), dice(logits, target), ce(aux, target), dice(aux, target)]
    scales = [1.0, 0.5, 0.4, 0.2]
    for i, ((total, norm), scale) in enumerate(zip(expected, scales, strict=True)):
        assert torch.allclose(sums[i], total * scale) and torch.equal(norms[i], norm), objective.names[i]
    with pytest.raises(ValueError, match="aux_weight 0.4 but the model lacks aux logits"):
        objective(logits, target)
