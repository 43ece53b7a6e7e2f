"""Samplers: order from (seed, epoch) only; w ranks see the same global batches as one; resume mid-epoch."""

from __future__ import annotations

import pytest

from seglab.engine.sampler import ShardSampler, TrainBatchSampler, epoch_permutation, partial_subset
from seglab.errors import ConfigError


def test_permutation_depends_on_seed_and_epoch_only():
    assert epoch_permutation(50, 3, 1).tolist() == epoch_permutation(50, 3, 1).tolist()
    assert epoch_permutation(50, 3, 1).tolist() != epoch_permutation(50, 3, 2).tolist()
    assert epoch_permutation(50, 4, 1).tolist() != epoch_permutation(50, 3, 1).tolist()
    assert sorted(epoch_permutation(50, 3, 1).tolist()) == list(range(50))


def test_ranks_split_each_global_batch_in_order():
    single = TrainBatchSampler(23, 6, seed=5)
    ranks = [TrainBatchSampler(23, 6, seed=5, rank=r, world_size=3) for r in range(3)]
    for sampler in (single, *ranks):
        sampler.set_position(epoch=2)
    merged = [[key for part in parts for key in part] for parts in zip(*ranks, strict=True)]
    assert merged == list(single)
    assert len(single) == single.steps_per_epoch == 3  # 23 // 6; the incomplete batch is dropped
    assert all(epoch == 2 for batch in merged for epoch, _ in batch)


def test_resume_position_yields_the_rest_of_the_epoch():
    sampler = TrainBatchSampler(20, 4, seed=0)
    sampler.set_position(1)
    full = list(sampler)
    sampler.set_position(1, start=3)
    assert len(sampler) == 2
    assert list(sampler) == full[3:]
    with pytest.raises(ValueError, match="batch 6 is outside epoch of 5 batches"):
        sampler.set_position(1, start=6)


def test_bad_batch_sizes_are_errors():
    with pytest.raises(ConfigError, match="--batch-size 5 is not divisible by the 2 processes"):
        TrainBatchSampler(20, 5, seed=0, world_size=2)
    with pytest.raises(ConfigError, match="--batch-size 4: the training set has 3 samples, fewer than one batch"):
        TrainBatchSampler(3, 4, seed=0)


def test_shards_cover_indices_once_without_padding():
    indices = partial_subset(37, 0.25, seed=0, step=100)
    assert len(indices) == 9 and indices == sorted(set(indices))
    shards = [list(ShardSampler(indices, r, 2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == indices
    assert len(shards[0]) == 5 and len(shards[1]) == 4


def test_partial_subset_is_a_new_draw_each_step():
    draws = {tuple(partial_subset(100, 0.25, seed=0, step=s)) for s in range(0, 500, 100)}
    assert len(draws) == 5
    assert partial_subset(100, 0.25, seed=0, step=100) == partial_subset(100, 0.25, seed=0, step=100)
