"""The embedded dataset: deterministic, complete, consistent instances, and not solvable by colour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seglab.data import DatasetError, build_dataset


def test_samples_are_a_pure_function_of_seed_split_and_index():
    a = build_dataset("synthetic", None, "train", length=5, size=48)
    b = build_dataset("synthetic", None, "train", length=5, size=48)
    for i in range(5):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    assert not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(a[0][0], build_dataset("synthetic", None, "val", length=5, size=48)[0][0])
    assert not torch.equal(a[0][0], build_dataset("synthetic", None, "train", length=5, size=48, seed=1)[0][0])
    with pytest.raises(IndexError):
        a[5]
    with pytest.raises(DatasetError, match="no split 'bogus'"):
        build_dataset("synthetic", None, "bogus")


def test_every_class_occurs_with_instances_matching_labels():
    ds = build_dataset("synthetic", None, "val", length=40, size=96)
    assert ds.classes == ("background", "disk", "square", "triangle", "ring", "cross") and ds.has_instances
    seen, sizes = set(), []
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 96, 96) and image.dtype == torch.uint8 and label.dtype == torch.uint8
        ids = ds.load_instances(i)
        assert torch.equal(ids > 0, label > 0)  # an instance exactly where there is an object
        for k in ids.unique().tolist():
            if k:
                assert len(label[ids == k].unique()) == 1  # one class per instance
                sizes.append(int((ids == k).sum()))
        seen |= set(label.unique().tolist())
    assert seen == set(range(6))
    assert min(sizes) < 32 and max(sizes) > 1000  # objects from tiny to large


def test_colour_alone_does_not_tell_the_class():
    """A per-pixel colour classifier (majority class per quantised RGB bin, fit on train) scores a low
    mIoU over the shape classes on val: the classes differ by shape, which a model must learn."""
    train = build_dataset("synthetic", None, "train", length=60, size=64)
    val = build_dataset("synthetic", None, "val", length=30, size=64)

    def bins_and_labels(ds):
        images, labels = zip(*(ds[i] for i in range(len(ds))), strict=True)
        q = torch.stack(images).long() // 32  # 8 levels per channel
        return ((q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2]).reshape(-1)), torch.stack(labels).long().reshape(-1)

    bins, labels = bins_and_labels(train)
    table = torch.zeros(512, 6, dtype=torch.long).index_put_((bins, labels), torch.ones_like(bins), accumulate=True)
    bins, labels = bins_and_labels(val)
    pred = table.argmax(1)[bins]
    ious = [
        ((pred == c) & (labels == c)).sum().item() / max(1, ((pred == c) | (labels == c)).sum().item())
        for c in range(1, 6)
    ]
    assert np.mean(ious) < 0.15
