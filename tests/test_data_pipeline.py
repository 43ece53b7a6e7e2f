"""Joint augmentation, keyed per-sample randomness, bad-sample policy, collation and normalization."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_fixtures import make_voc, voc_id
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from seglab.data import (
    Augment,
    AugmentedDataset,
    BadSampleError,
    Collate,
    TrainTransform,
    augment_preset,
    build_dataset,
    mean_fill,
    normalize,
    worker_init,
)
from seglab.errors import ConfigError


def pair(height=60, width=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
    label = torch.randint(0, 21, (height, width), dtype=torch.uint8, generator=g)
    label[0] = 255
    return image, label


def test_output_is_uint8_at_crop_size_and_labels_keep_their_values():
    image, label = pair()
    t = TrainTransform(Augment(crop=(64, 48), scale_range=(0.5, 2.0), jitter=0.3), ignore_index=255)
    for seed in range(30):
        out_image, out_label = t(image, label, np.random.default_rng(seed))
        assert out_image.shape == (3, 64, 48) and out_image.dtype == torch.uint8
        assert out_label.shape == (64, 48) and out_label.dtype == torch.uint8
        assert set(out_label.unique().tolist()) <= set(label.unique().tolist())  # nearest only: no new values


def test_scale_one_is_a_plain_crop():
    image, label = pair()
    t = TrainTransform(Augment(crop=(32, 40), scale_range=(1.0, 1.0), flip=False), ignore_index=255)
    out_image, out_label = t(image, label, np.random.default_rng(3))
    found = [
        (y, x)
        for y in range(60 - 32 + 1)
        for x in range(80 - 40 + 1)
        if torch.equal(image[:, y : y + 32, x : x + 40], out_image)
    ]
    assert len(found) == 1
    y, x = found[0]
    assert torch.equal(label[y : y + 32, x : x + 40], out_label)


@pytest.mark.parametrize("scale", [2.0, 3.0])
def test_crop_then_resize_equals_resize_then_crop_for_labels(scale):
    image, label = pair()
    crop = (48, 60)
    t = TrainTransform(Augment(crop=crop, scale_range=(scale, scale), flip=False), ignore_index=255)
    _, out_label = t(image, label, np.random.default_rng(1))
    whole = F.resize(label[None], [int(60 * scale), int(80 * scale)], InterpolationMode.NEAREST_EXACT)[0]
    windows = [
        (y, x)
        for y in range(0, whole.shape[0] - crop[0] + 1, int(scale))
        for x in range(0, whole.shape[1] - crop[1] + 1, int(scale))
        if torch.equal(whole[y : y + crop[0], x : x + crop[1]], out_label)
    ]
    assert windows  # the same pixels the common way (resize whole, then crop) would give


def test_small_images_are_padded_with_fill_and_ignore():
    image, label = pair(20, 30)
    t = TrainTransform(Augment(crop=(64, 64), scale_range=(1.0, 1.0), flip=False), ignore_index=200, fill=(10, 20, 30))
    out_image, out_label = t(image, label, np.random.default_rng(0))
    assert torch.equal(out_image[:, :20, :30], image) and torch.equal(out_label[:20, :30], label)
    assert (out_label[20:] == 200).all() and (out_label[:, 30:] == 200).all()
    assert out_image[:, 40, 50].tolist() == [10, 20, 30]
    black = TrainTransform(Augment(crop=(64, 64), scale_range=(1.0, 1.0), pad_mean=False), 200, (10, 20, 30))
    assert black(image, label, np.random.default_rng(0))[0][:, 40, 50].tolist() == [0, 0, 0]


def test_flip_happens_about_half_the_time_and_moves_image_and_label_together():
    image, label = pair(32, 32)
    t = TrainTransform(Augment(crop=(32, 32), scale_range=(1.0, 1.0)), ignore_index=255)
    flips = 0
    for seed in range(200):
        out_image, out_label = t(image, label, np.random.default_rng(seed))
        flipped = torch.equal(out_image, image.flip(-1))
        assert flipped or torch.equal(out_image, image)
        assert torch.equal(out_label, label.flip(-1) if flipped else label)
        flips += flipped
    assert 70 < flips < 130


def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    make_voc(tmp_path, train=list(range(1, 9)), val=[9])
    ds = build_dataset("voc", tmp_path, "train")
    t = TrainTransform(Augment(crop=(32, 32), jitter=0.2), ds.ignore_index, mean_fill((0.485, 0.456, 0.406)))
    aug = AugmentedDataset(ds, t, seed=5)
    a, b = aug[(2, 3)], aug[(2, 3)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"]) and a["index"] == 3
    assert not torch.equal(aug[(3, 3)]["image"], a["image"])  # another epoch, another draw
    assert not torch.equal(AugmentedDataset(ds, t, seed=6)[(2, 3)]["image"], a["image"])
    keys = [[(1, i), (1, (i + 3) % 8)] for i in range(8)]

    def batches(workers):
        loader = torch.utils.data.DataLoader(
            aug,
            batch_sampler=keys,
            num_workers=workers,
            collate_fn=Collate(ds.ignore_index),
            worker_init_fn=worker_init,
        )
        return list(loader)

    for x, y in zip(batches(0), batches(2), strict=True):  # worker count changes nothing
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
        assert torch.equal(x["index"], y["index"])


def test_bad_sample_is_an_error_or_skipped_and_reported(tmp_path):
    make_voc(tmp_path, train=[1, 2, 3], val=[4])
    bad = tmp_path / "VOCdevkit/VOC2012/JPEGImages" / f"{voc_id(2)}.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    ds = build_dataset("voc", tmp_path, "train")
    t = TrainTransform(Augment(crop=(16, 16)), ds.ignore_index)
    with pytest.raises(BadSampleError, match=rf"{voc_id(2)}\.jpg"):
        AugmentedDataset(ds, t)[1]
    collate = Collate(ds.ignore_index)
    batch = collate([AugmentedDataset(ds, t, skip_bad=True)[i] for i in range(3)])
    assert batch["image"].shape == (2, 3, 16, 16) and batch["index"].tolist() == [0, 2]
    assert batch["skipped"] == [
        {
            "index": 1,
            "id": voc_id(2),
            "path": str(bad),
            "kind": "image_unreadable",
            "reason": batch["skipped"][0]["reason"],
        }
    ]
    empty = collate([AugmentedDataset(ds, t, skip_bad=True)[1]])
    assert empty["image"].shape[0] == 0 and len(empty["skipped"]) == 1


def test_collate_pads_different_sizes_with_ignore():
    items = [
        {
            "image": torch.full((3, 4, 5), 7, dtype=torch.uint8),
            "label": torch.ones(4, 5, dtype=torch.uint8),
            "index": 0,
        },
        {
            "image": torch.full((3, 6, 3), 9, dtype=torch.uint8),
            "label": torch.zeros(6, 3, dtype=torch.uint8),
            "index": 4,
        },
    ]
    batch = Collate(255)(items)
    assert batch["image"].shape == (2, 3, 6, 5) and batch["label"].shape == (2, 6, 5)
    assert (batch["label"][0, 4:] == 255).all() and (batch["label"][1, :, 3:] == 255).all()
    assert batch["image"][0, 0, 5, 0] == 0 and batch["index"].tolist() == [0, 4]


def test_normalize_matches_torchvision_on_float_images():
    images = torch.randint(0, 256, (2, 3, 8, 9), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = v2.Normalize(mean, std)(images.float() / 255)
    torch.testing.assert_close(normalize(images, mean, std), expected)
    assert mean_fill(mean) == (124, 116, 104)


def test_presets_follow_each_dataset():
    assert augment_preset("cityscapes").crop == (512, 1024)
    assert augment_preset("voc_aug").scale_range == (0.5, 2.0)
    assert augment_preset("folder:mine").crop == (512, 512)
    with pytest.raises(ConfigError, match=r"--scale-range must satisfy 0 < MIN <= MAX, got \[2.0, 0.5\]"):
        Augment(scale_range=(2.0, 0.5))
