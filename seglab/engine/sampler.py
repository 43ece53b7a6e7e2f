"""Samplers whose order is a pure function of (seed, epoch): exact resume and DDP without worker state.

Training batches are keys ``(epoch, index)`` for `seglab.data.AugmentedDataset`, which derives each
sample's augmentation from (seed, epoch, index). The epoch's permutation comes from (seed, epoch); the
global batch ``step`` is ``perm[step * B:(step + 1) * B]`` and rank ``r`` of ``w`` takes the r-th slice of
it, so a run on w processes sees the same global batches as a run on one. Resuming mid-epoch starts the
iteration at a step without touching (decoding) the skipped samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from seglab.errors import ConfigError


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """Return the permutation of `num_samples` indices for `epoch` (a function of seed and epoch only)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator)


class TrainBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's part of each global batch of an epoch as a list of (epoch, index) keys.

    Incomplete last batches are dropped so that every step has the same global batch size.
    """

    def __init__(self, num_samples: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise ConfigError(
                f"--batch-size {global_batch} is not divisible by the {world_size} processes: give a multiple of "
                f"{world_size} (it is the global batch, split across ranks)"
            )
        if num_samples < global_batch:
            raise ConfigError(
                f"--batch-size {global_batch}: the training set has {num_samples} samples, fewer than one batch; "
                f"give --batch-size {num_samples} or less"
            )
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.local_batch = global_batch // world_size
        self.epoch, self.start = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        """Return the number of (global) batches in an epoch."""
        return self.num_samples // self.global_batch

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Make the next iteration yield epoch `epoch` from its batch `start` on."""
        if not 0 <= start <= self.steps_per_epoch:
            raise ValueError(f"batch {start} is outside epoch of {self.steps_per_epoch} batches")
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = epoch_permutation(self.num_samples, self.seed, self.epoch).tolist()
        for step in range(self.start, self.steps_per_epoch):
            first = step * self.global_batch + self.rank * self.local_batch
            yield [(self.epoch, i) for i in perm[first : first + self.local_batch]]


def partial_subset(num_samples: int, fraction: float, seed: int, step: int) -> list[int]:
    """Return a sorted random `fraction` of range(num_samples), drawn anew for each step."""
    count = max(1, round(num_samples * fraction))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step + 7_919)
    return sorted(torch.randperm(num_samples, generator=generator)[:count].tolist())


class ShardSampler(torch.utils.data.Sampler):
    """Yields this rank's share of `indices` (every world_size-th one): no padding, no duplicates."""

    def __init__(self, indices: Sequence[int], rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(indices)[rank::world_size]

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
