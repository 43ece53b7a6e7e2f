"""The linear probe: how much of the segmentation task a frozen basenet's features already solve.

A 1x1 convolution (a per-pixel linear classifier) reads one tap of the frozen basenet, with its starting
weights (`pretrained`) and BatchNorm statistics left as they are; its logits are bilinearly upsampled to the
image and trained with cross-entropy for a few hundred Adam steps on the study's training crops (the
dataset's augmentation preset with the study's crop). Its score is the mIoU on the study's test split,
through the same evaluation loop as every run. Linear probes as a measure of representation quality follow
Alain & Bengio, "Understanding intermediate layers using linear classifier probes" (2016), and their
per-pixel form the frozen-backbone evaluations of dense features (e.g. Oquab et al., DINOv2, 2023).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab import metrics
from seglab.config import ProbeConfig, TrainConfig
from seglab.data.base import SegmentationDataset, build_dataset
from seglab.data.loader import AugmentedDataset, Collate
from seglab.data.presets import augment_preset
from seglab.data.transforms import TrainTransform, mean_fill, normalize
from seglab.engine.distributed import resolve_device
from seglab.engine.evaluate import evaluate
from seglab.engine.sampler import TrainBatchSampler
from seglab.models import build_basenet, load_pretrained
from seglab.models.meta import resize


class ProbeModel(nn.Module):
    """A frozen basenet and a 1x1 classifier on its tap at `reduction`; logits at the input size."""

    def __init__(self, basenet: nn.Module, reduction: int, num_classes: int) -> None:
        super().__init__()
        self.basenet = basenet.requires_grad_(False)
        self.reduction = basenet.tap(reduction).reduction
        self.classifier = nn.Conv2d(basenet.tap(reduction).channels, num_classes, 1)
        self.num_classes = num_classes
        self.input_mean, self.input_std = basenet.input_mean, basenet.input_std

    def train(self, mode: bool = True) -> ProbeModel:
        """Train the classifier only: the basenet stays in eval mode (its BatchNorm statistics frozen)."""
        super().train(mode)
        self.basenet.eval()
        return self

    def normalize(self, images: Tensor) -> Tensor:
        """Map uint8 images [N, 3, H, W] to the basenet's normalized input."""
        return normalize(images, self.input_mean, self.input_std)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            features = self.basenet(x)[self.reduction]
        return resize(self.classifier(features), x.shape[-2:])


def dataset_name(train: TrainConfig) -> str:
    """Return the dataset training uses by default: voc with a data root, the embedded synthetic set without."""
    return train.dataset or ("voc" if train.data_root else "synthetic")


def probe_datasets(train: TrainConfig, split: str) -> tuple[SegmentationDataset, SegmentationDataset]:
    """Return the probe's training set (the study's train split) and the split it is scored on."""
    root = train.data_root or None
    return (
        build_dataset(dataset_name(train), root, train.train_split, **train.dataset_options),
        build_dataset(dataset_name(train), root, split, **train.dataset_options),
    )


def train_probe(train: TrainConfig, probe: ProbeConfig, split: str, seed: int) -> dict:
    """Train the linear probe of `train.basenet` and return its test-split mIoU, final loss, tap and steps."""
    device = resolve_device(train.device)
    train_set, test_set = probe_datasets(train, split)
    torch.manual_seed(seed)
    basenet = build_basenet(train.basenet, train.output_stride)
    if train.pretrained not in ("", "none"):
        load_pretrained(basenet, train.pretrained)
    model = ProbeModel(basenet, probe.tap, train_set.num_classes).to(device)
    preset = augment_preset(dataset_name(train))
    augment = dataclasses.replace(
        preset,
        crop=tuple(train.crop or preset.crop),
        scale_range=tuple(train.scale_range),
        flip=train.flip,
        jitter=train.jitter,
        pad_mean=train.pad_mean,
    )
    transform = TrainTransform(augment, train_set.ignore_index, mean_fill(basenet.input_mean))
    # a training set smaller than one batch gives batches of all of it
    sampler = TrainBatchSampler(len(train_set), min(probe.batch_size, len(train_set)), seed)
    loader = torch.utils.data.DataLoader(
        AugmentedDataset(train_set, transform, seed),
        batch_sampler=sampler,
        collate_fn=Collate(train_set.ignore_index),
        num_workers=train.workers,
        generator=torch.Generator(),
    )
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=probe.learnrate)
    model.train()
    step, loss = 0, None
    while step < probe.steps:
        sampler.set_position(step // sampler.steps_per_epoch, step % sampler.steps_per_epoch)
        for batch in loader:
            logits = model(model.normalize(batch["image"].to(device)))
            loss = F.cross_entropy(logits, batch["label"].to(device).long(), ignore_index=train_set.ignore_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == probe.steps:
                break
    result = evaluate(model, test_set, limit=probe.limit, gallery=0, workers=train.workers)
    miou = float(metrics.pooled_miou(result.per_image))
    return {
        "probe_miou": None if miou != miou else miou,
        "final_loss": None if loss is None else float(loss.detach()),
        "tap": probe.tap,
        "steps": probe.steps,
        "images": len(result.image_ids),
    }
