"""Pixel losses that return (sum, normalizer) so that a mean is exact across DDP ranks and never NaN.

`F.cross_entropy(reduction="mean")` returns NaN when every target is ignored (0 / 0). Here the loss of a
batch is ``sum / max(normalizer, 1)`` after the normalizer is summed over ranks: an all-ignored batch gives
loss 0 and zero gradients, and w ranks give the loss of one process holding the whole global batch.
Cross-entropy, OHEM and focal loss are means over valid pixels; Dice and Lovász-softmax, which are not sums
over pixels, are computed per image and averaged over the images that have a valid pixel. Every loss
honours the ignore index and the class weights. `Objective` combines the terms of `--loss`
(e.g. ``ce+0.5*dice``) and the auxiliary head's loss.

OHEM follows Shrivastava, Gupta & Girshick, "Training Region-based Object Detectors with Online Hard
Example Mining" (CVPR 2016), in its pixel form (Wu, Shen & van den Hengel, "High-performance Semantic
Segmentation Using Very Deep Fully Convolutional Networks", 2016): keep the pixels whose probability of
the true class is below a threshold, and at least `min_kept` of the hardest ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.config import parse_loss
from seglab.errors import ConfigError

DICE_EPS = 1e-7  # smp's: keeps 0 / 0 (a class absent from an image and its prediction) at 0


class SegmentationLoss(nn.Module):
    """Cross-entropy with an ignore index, optional class weights and optional OHEM, computed in fp32."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_weights: Sequence[float] = (),
        ohem: bool = False,
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100000,
    ) -> None:
        super().__init__()
        weight = _class_weights(class_weights, num_classes) if class_weights else None
        self.register_buffer("weight", weight, persistent=False)
        self.ignore_index = ignore_index
        self.ohem, self.ohem_thresh, self.ohem_min_kept = ohem, ohem_thresh, ohem_min_kept

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Return (sum of pixel losses, normalizer) for logits [N,C,H,W] and targets [N,H,W]."""
        target = target.long()
        pixel = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="none")
        valid = target != self.ignore_index
        if self.ohem:
            valid = valid & self._hard(pixel, valid)
        if self.weight is None:
            return (pixel * valid).sum(), valid.sum().float()
        # Like PyTorch's weighted mean: each pixel counts with its class weight, in the sum and the normalizer.
        weights = self.weight[torch.where(valid, target, 0)] * valid
        return (pixel * weights).sum(), weights.sum()

    def normalizer(self, target: Tensor) -> Tensor:
        """Return a batch's normalizer before OHEM: its valid pixels, each counted with its class weight; known
        before any forward pass, so that gradient accumulation can divide every pass by the batch's total."""
        target = target.long()
        valid = target != self.ignore_index
        if self.weight is None:
            return valid.sum().float()
        return (self.weight[torch.where(valid, target, 0)] * valid).sum()

    def _hard(self, pixel: Tensor, valid: Tensor) -> Tensor:
        """Return the mask of hard pixels: true-class probability below the threshold, at least min_kept."""
        with torch.no_grad():
            if int(valid.sum()) <= self.ohem_min_kept:
                return valid
            prob = torch.where(valid, torch.exp(-pixel), torch.ones_like(pixel))
            threshold = torch.tensor(self.ohem_thresh, device=prob.device)
            if self.ohem_min_kept > 0:
                threshold = torch.maximum(threshold, prob.flatten().kthvalue(self.ohem_min_kept).values)
            return valid & (prob <= threshold)


def _class_weights(class_weights: Sequence[float], num_classes: int) -> Tensor:
    """Return the class weights as a tensor (ones when none are given); a wrong count is an error."""
    if class_weights and len(class_weights) != num_classes:
        raise ConfigError(
            f"--class-weights has {len(class_weights)} values for {num_classes} classes: give one per class"
        )
    return torch.tensor(list(class_weights) or [1.0] * num_classes, dtype=torch.float32)


class PerImageLoss(nn.Module):
    """A loss computed per image and averaged over the images holding a valid pixel (Dice, Lovász-softmax:
    neither is a sum over pixels), with per-class weights (1 by default)."""

    def __init__(self, num_classes: int, ignore_index: int = 255, class_weights: Sequence[float] = ()) -> None:
        super().__init__()
        self.register_buffer("weight", _class_weights(class_weights, num_classes), persistent=False)
        self.ignore_index, self.num_classes = ignore_index, num_classes

    def normalizer(self, target: Tensor) -> Tensor:
        """Return the normalizer `forward` gives for `target`, from the labels alone: its images with a valid
        pixel."""
        return (target != self.ignore_index).flatten(1).any(1).sum().float()


class DiceLoss(PerImageLoss):
    """Soft Dice loss per image (Milletari et al., V-Net, 2016, over softmax probabilities), summed over images.

    For each image and class c: dice_c = 2 sum(p_c y_c) / sum(p_c + y_c) over its valid pixels, and the
    image's loss is sum_c w_c [c present] (1 - dice_c) / sum_c w_c: smp's `DiceLoss("multiclass")` on that
    image (absent classes count 0) with class weights w (1 by default). Normalizer: the images with a
    valid pixel. Per image rather than per batch, so that a DDP mean over images is exact.
    """

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Return (sum of per-image losses, number of images with a valid pixel)."""
        target = target.long()
        valid = (target != self.ignore_index).unsqueeze(1)
        probs = logits.float().softmax(1) * valid
        onehot = F.one_hot(torch.where(valid[:, 0], target, 0), self.num_classes).permute(0, 3, 1, 2) * valid
        intersection = (probs * onehot).sum((2, 3))
        cardinality = (probs + onehot).sum((2, 3))
        dice = 2 * intersection / cardinality.clamp_min(DICE_EPS)
        present = onehot.sum((2, 3)) > 0
        per_image = ((1 - dice) * present * self.weight).sum(1) / self.weight.sum()
        has_valid = valid.flatten(1).any(1)
        return (per_image * has_valid).sum(), has_valid.sum().float()


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017) in its one-vs-rest sigmoid
    form per class, as smp's `FocalLoss("multiclass")` and mmsegmentation's: per pixel,
    sum_c w_c (1 - q_c)^gamma BCE(logit_c, [target = c]) / sum_c w_c, where q_c is the probability the sigmoid
    gives the right answer for class c. Normalizer: the valid pixels. gamma = 0 is the per-class sigmoid
    cross-entropy.
    """

    def __init__(
        self, num_classes: int, ignore_index: int = 255, class_weights: Sequence[float] = (), gamma: float = 2.0
    ) -> None:
        super().__init__()
        self.register_buffer("weight", _class_weights(class_weights, num_classes), persistent=False)
        self.ignore_index, self.num_classes, self.gamma = ignore_index, num_classes, gamma

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Return (sum of pixel losses, number of valid pixels)."""
        target = target.long()
        valid = target != self.ignore_index
        onehot = F.one_hot(torch.where(valid, target, 0), self.num_classes).permute(0, 3, 1, 2).float()
        bce = F.binary_cross_entropy_with_logits(logits.float(), onehot, reduction="none")
        focal = (1 - torch.exp(-bce)).pow(self.gamma) * bce
        pixel = (focal * self.weight.view(1, -1, 1, 1)).sum(1) / self.weight.sum()
        return (pixel * valid).sum(), valid.sum().float()

    def normalizer(self, target: Tensor) -> Tensor:
        """Return the normalizer `forward` gives for `target`, from the labels alone."""
        return (target != self.ignore_index).sum().float()


class LovaszLoss(PerImageLoss):
    """Lovász-softmax loss per image (Berman, Triki & Blaschko, "The Lovász-Softmax loss", CVPR 2018), the
    convex surrogate of the per-class Jaccard loss, over the classes present in the image (smp's
    `LovaszLoss("multiclass", per_image=True)`); class weights weight the mean over those classes.
    Normalizer: the images with a valid pixel.
    """

    def forward(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Return (sum of per-image losses, number of images with a valid pixel)."""
        target = target.long()
        probs = logits.float().softmax(1)
        total = probs.sum() * 0.0  # connected to the logits, so that an all-ignored batch backpropagates zeros
        images = 0
        for prob, label in zip(probs, target, strict=True):
            valid = label != self.ignore_index
            if not valid.any():
                continue
            total = total + self._image_loss(prob[:, valid], label[valid])
            images += 1
        return total, torch.tensor(float(images), device=logits.device)

    def _image_loss(self, prob: Tensor, label: Tensor) -> Tensor:
        """Lovász-softmax of one image's valid pixels: prob [C, P], label [P]."""
        classes = torch.unique(label)
        fg = (label.unsqueeze(0) == classes.unsqueeze(1)).float()  # [K, P]
        errors = (fg - prob[classes]).abs()
        errors, order = errors.sort(dim=1, descending=True)
        fg = fg.gather(1, order)
        # Gradient of the Lovász extension of the Jaccard loss at the sorted errors (Berman et al., Alg. 1).
        positives = fg.sum(1, keepdim=True)
        intersection = positives - fg.cumsum(1)
        union = positives + (1 - fg).cumsum(1)
        jaccard = 1 - intersection / union
        grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
        weight = self.weight[classes]
        return ((errors * grad).sum(1) * weight).sum() / weight.sum()


class Objective(nn.Module):
    """The training objective: the weighted terms of `--loss` on the logits and, with an auxiliary head, the
    same terms on its logits times `aux_weight`.

    `forward` returns (sums [T], normalizers [T]), one entry per term (weights applied to the sums), named by
    `names` (auxiliary terms prefixed `aux_`): the training step sums both over the DDP ranks, so the
    objective sum_t sums_t / max(normalizers_t, 1) is exactly the loss of one process holding the global batch.
    """

    def __init__(self, terms: Sequence[tuple[str, float, nn.Module]], aux_weight: float = 0.0) -> None:
        super().__init__()
        main = [name for name, _, _ in terms]
        self.names = main + ([f"aux_{name}" for name in main] if aux_weight > 0 else [])
        self.weights = [weight for _, weight, _ in terms]
        self.terms = nn.ModuleList(module for _, _, module in terms)
        self.aux_weight = aux_weight
        self.heads = 2 if aux_weight > 0 else 1

    @property
    def ohem(self) -> bool:
        """Whether a term is OHEM, whose normalizer (the kept pixels) is known only after the forward pass."""
        return any(getattr(term, "ohem", False) for term in self.terms)

    def normalizers(self, target: Tensor) -> Tensor:
        """Return the normalizers [T] of the targets, from the labels alone (OHEM's: before mining), per term as
        `forward` orders them; gradient accumulation divides every pass by the whole batch's."""
        return torch.stack([term.normalizer(target) for _ in range(self.heads) for term in self.terms])

    def forward(self, output: Tensor | tuple[Tensor, Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
        """Return (weighted sums, normalizers), per term, for the model's output and the targets."""
        logits, aux = output if isinstance(output, tuple) else (output, None)
        if (aux is not None) != (self.aux_weight > 0):
            raise ValueError(
                f"aux_weight {self.aux_weight} but the model {'gave' if aux is not None else 'lacks'} aux logits"
            )
        sums, norms = [], []
        for head, scale in ((logits, 1.0), (aux, self.aux_weight)):
            if head is None:
                continue
            for weight, term in zip(self.weights, self.terms, strict=True):
                total, norm = term(head, target)
                sums.append(total * weight * scale)
                norms.append(norm)
        return torch.stack(sums), torch.stack(norms)


def build_objective(
    spec: str,
    num_classes: int,
    ignore_index: int = 255,
    class_weights: Sequence[float] = (),
    ohem_thresh: float = 0.7,
    ohem_min_kept: int = 100000,
    focal_gamma: float = 2.0,
    aux_weight: float = 0.0,
) -> Objective:
    """Return the objective of a `--loss` value (see `seglab.config.parse_loss`)."""
    builders = {
        "ce": lambda: SegmentationLoss(num_classes, ignore_index, class_weights),
        "ohem": lambda: SegmentationLoss(num_classes, ignore_index, class_weights, True, ohem_thresh, ohem_min_kept),
        "dice": lambda: DiceLoss(num_classes, ignore_index, class_weights),
        "focal": lambda: FocalLoss(num_classes, ignore_index, class_weights, focal_gamma),
        "lovasz": lambda: LovaszLoss(num_classes, ignore_index, class_weights),
    }
    return Objective([(name, weight, builders[name]()) for name, weight in parse_loss(spec)], aux_weight)
