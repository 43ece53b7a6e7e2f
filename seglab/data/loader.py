"""From a dataset to batches: per-sample keyed randomness, bad-sample policy, collation, worker setup.

`AugmentedDataset` takes keys `(epoch, index)` (as `seglab.engine.sampler.TrainBatchSampler` yields
them) and draws each sample's augmentation from a generator seeded by (seed, epoch, index), so the
result is the same whichever worker decodes it and after any resume (reliability rule 3).
A bad sample raises `BadSampleError` naming the file; with `skip_bad=True` it becomes an entry in
the batch's `skipped` list, which the training loop counts and logs; it is never replaced.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import numpy as np
import torch

from seglab.data.base import SegmentationDataset
from seglab.errors import BadSampleError, ConfigError

Transform = Callable[[torch.Tensor, torch.Tensor, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]


class AugmentedDataset(torch.utils.data.Dataset):
    """Wraps a dataset: item `(epoch, index)` (or a plain index: epoch 0) -> dict(image, label, index).

    `image` is uint8 [3,H,W], `label` uint8 [H,W]; with `transform=None` they are returned as decoded.
    """

    def __init__(
        self, dataset: SegmentationDataset, transform: Transform | None, seed: int = 0, *, skip_bad: bool = False
    ) -> None:
        if seed < 0:
            raise ConfigError(f"--seed must be non-negative, got {seed}")
        self.dataset, self.transform, self.seed, self.skip_bad = dataset, transform, seed, skip_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        """Return the generator of sample `index` in `epoch`: a function of (seed, epoch, index) only."""
        return np.random.default_rng([self.seed, epoch, index])

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        try:
            image, label = self.dataset.load(index)
        except BadSampleError as err:
            if not self.skip_bad:
                raise
            return {
                "skipped": {
                    "index": index,
                    "id": self.dataset.sample_id(index),
                    "path": err.path,
                    "kind": err.kind,
                    "reason": err.reason,
                }
            }
        if self.transform is not None:
            image, label = self.transform(image, label, self.rng(epoch, index))
        return {"image": image, "label": label, "index": index}


class Collate:
    """Stacks samples into a batch dict: image uint8 [N,3,H,W], label uint8 [N,H,W], index int64 [N],
    skipped (list of dicts for bad samples left out). Samples of different sizes are padded at the
    bottom and right to the largest (image with 0, label with `ignore_index`)."""

    def __init__(self, ignore_index: int) -> None:
        self.ignore_index = ignore_index

    def __call__(self, items: list[dict]) -> dict:
        good = [item for item in items if "skipped" not in item]
        skipped = [item["skipped"] for item in items if "skipped" in item]
        if not good:
            return {
                "image": torch.zeros((0, 3, 0, 0), dtype=torch.uint8),
                "label": torch.zeros((0, 0, 0), dtype=torch.uint8),
                "index": torch.zeros(0, dtype=torch.int64),
                "skipped": skipped,
            }
        height = max(item["image"].shape[1] for item in good)
        width = max(item["image"].shape[2] for item in good)
        images = torch.zeros((len(good), 3, height, width), dtype=torch.uint8)
        labels = torch.full((len(good), height, width), self.ignore_index, dtype=good[0]["label"].dtype)
        for row, item in enumerate(good):
            h, w = item["label"].shape
            images[row, :, :h, :w] = item["image"]
            labels[row, :h, :w] = item["label"]
        return {
            "image": images,
            "label": labels,
            "index": torch.tensor([item["index"] for item in good], dtype=torch.int64),
            "skipped": skipped,
        }


def worker_init(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: workers ignore SIGTERM and SIGINT, so the main process can save
    a checkpoint and shut them down itself (reliability rule 4)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
