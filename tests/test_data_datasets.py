"""Each dataset loads from a fixture in its real on-disk format; VOC and SBD agree with torchvision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import (
    FOLDER_CLASSES,
    make_ade20k,
    make_cityscapes,
    make_folder,
    make_sbd,
    make_voc,
    voc_id,
)
from PIL import Image
from torchvision.datasets import Cityscapes, SBDataset, VOCSegmentation

from seglab.cli import main as seglab_main
from seglab.data import DATASETS, BadSampleError, DatasetError, build_dataset
from seglab.data.cityscapes import TRAIN_CLASSES
from seglab.data.voc import convert_sbd


def test_every_dataset_is_registered():
    assert DATASETS.names() == ["ade20k", "cityscapes", "synthetic", "voc", "voc_aug", "folder"]


def test_voc_matches_torchvision_voc_segmentation(tmp_path):
    make_voc(tmp_path, train=[1, 2, 3], val=[4, 5])
    ours = build_dataset("voc", tmp_path, "val")
    reference = VOCSegmentation(str(tmp_path), year="2012", image_set="val", download=False)
    assert len(ours) == len(reference) == 2
    assert ours.num_classes == 21 and ours.ignore_index == 255 and ours.classes[15] == "person"
    for i in range(len(ours)):
        image, label = ours[i]
        ref_image, ref_label = reference[i]
        assert image.dtype == torch.uint8 and label.dtype == torch.uint8
        assert torch.equal(image, torch.from_numpy(np.array(ref_image)).permute(2, 0, 1))
        assert torch.equal(label, torch.from_numpy(np.array(ref_label)))
        assert 255 in label.unique().tolist()  # VOC boundaries stay the ignore index
    assert ours.sample_id(0) == voc_id(4)


def test_voc_instances_drop_the_boundary_value(tmp_path):
    make_voc(tmp_path, train=[1], val=[2])
    ds = build_dataset("voc", tmp_path, "train")
    ids = ds.load_instances(0)
    raw = np.asarray(Image.open(tmp_path / "VOCdevkit/VOC2012/SegmentationObject" / f"{voc_id(1)}.png"))
    assert ids.dtype == torch.int32 and set(ids.unique().tolist()) == {0, 1, 2}
    assert torch.equal(ids, torch.from_numpy(np.where(raw == 255, 0, raw).astype(np.int32)))


def test_voc_accepts_the_devkit_the_voc2012_folder_or_its_parent(tmp_path):
    make_voc(tmp_path, train=[1], val=[2])
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        assert len(build_dataset("voc", root, "train")) == 1
    with pytest.raises(DatasetError, match="no split 'nope'.*train, trainval, val"):
        build_dataset("voc", tmp_path, "nope")
    with pytest.raises(DatasetError, match="needs --data-root"):
        build_dataset("voc", None, "train")


def voc_aug_fixture(root):
    # VOC train 1-4, val 5-7; SBD train 3,8,9,5 (5 is VOC val: excluded), SBD val 10, 2.
    make_voc(root, train=[1, 2, 3, 4], val=[5, 6, 7], sbd_only=[8, 9, 10])
    make_sbd(root, train=[3, 8, 9, 5], val=[10, 2])


def test_voc_aug_builds_train_aug_as_the_field_does(tmp_path, capsys):
    voc_aug_fixture(tmp_path)
    ds = build_dataset("voc_aug", tmp_path, "train_aug")
    expected = sorted(({3, 8, 9, 5} | {10, 2} | {1, 2, 3, 4}) - {5, 6, 7})
    assert [ds.sample_id(i) for i in range(len(ds))] == [voc_id(k) for k in expected]
    out = capsys.readouterr().out
    assert f"train_aug: {len(expected)} images" in out and "seglab data convert" in out
    seed_val = build_dataset("voc_aug", tmp_path, "seed_val")  # VOC val minus SBD train
    assert [seed_val.sample_id(i) for i in range(len(seed_val))] == [voc_id(6), voc_id(7)]
    assert len(build_dataset("voc_aug", tmp_path, "val")) == 3


def test_voc_aug_labels_match_torchvision_sbdataset_and_prefer_voc_pngs(tmp_path):
    voc_aug_fixture(tmp_path)
    ds = build_dataset("voc_aug", tmp_path, "train_aug")
    sbd = SBDataset(str(tmp_path / "benchmark_RELEASE" / "dataset"), image_set="train", mode="segmentation")
    sbd_targets = {voc_id(k): np.array(sbd[i][1]) for i, k in enumerate([3, 8, 9, 5])}
    checked = 0
    for i in range(len(ds)):
        sample = ds.samples[i]
        _, label = ds[i]
        if sample.label.suffix == ".mat":
            if sample.id in sbd_targets:
                assert torch.equal(label, torch.from_numpy(sbd_targets[sample.id]))
                checked += 1
        else:  # annotated by VOC: VOC's own PNG, even where SBD has the image too (ids 2, 3)
            assert sample.label.parent.name == "SegmentationClass"
    assert checked == 2  # ids 8 and 9
    instances = ds.load_instances([ds.sample_id(i) for i in range(len(ds))].index(voc_id(8)))
    assert set(instances.unique().tolist()) == {0, 1, 2}


def test_seglab_data_convert_writes_sbd_pngs_that_load_identically(tmp_path, capsys):
    voc_aug_fixture(tmp_path)
    before = build_dataset("voc_aug", tmp_path, "train_aug")
    labels = [before[i][1] for i in range(len(before))]
    instances = [before.load_instances(i) for i in range(len(before))]
    assert seglab_main(["data", "convert", "--dataset", "voc_aug", "--data-root", str(tmp_path)]) == 0
    assert "12 PNGs written, 0 already there, 0 failed" in capsys.readouterr().out  # 6 cls + 6 inst
    assert convert_sbd(tmp_path) == {"written": 0, "kept": 12, "failed": 0, "failures": []}
    png = Image.open(tmp_path / "benchmark_RELEASE/dataset/cls_png" / f"{voc_id(8)}.png")
    assert png.mode == "P"
    capsys.readouterr()
    after = build_dataset("voc_aug", tmp_path, "train_aug")
    assert "seglab data convert" not in capsys.readouterr().out
    assert not any(s.label.suffix == ".mat" for s in after.samples)
    for i in range(len(after)):
        assert torch.equal(after[i][1], labels[i])
        assert torch.equal(after.load_instances(i), instances[i])


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    raw = make_cityscapes(tmp_path)
    ds = build_dataset("cityscapes", tmp_path, "train")
    assert len(ds) == 4 and ds.num_classes == 19 and ds.classes[13] == "car"
    lut = {label_id: train_id for train_id, (label_id, _, _) in enumerate(TRAIN_CLASSES)}
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape == (3, 32, 64)
        expected = np.vectorize(lambda v: lut.get(int(v), 255))(raw[i]).astype(np.uint8)
        assert torch.equal(label, torch.from_numpy(expected))
    ids = ds.load_instances(0)
    assert set(ids.unique().tolist()) == {0, 26001, 24002}


def test_cityscapes_matches_torchvision_cityscapes(tmp_path):
    make_cityscapes(tmp_path)
    ours = build_dataset("cityscapes", tmp_path, "train")
    reference = Cityscapes(str(tmp_path), split="train", mode="fine", target_type=["semantic", "instance"])
    # torchvision's own table of label id -> train id (255 = ignore) is the independent reference
    train_id = np.full(256, 255, np.uint8)
    for cls in Cityscapes.classes:
        if cls.id >= 0:
            train_id[cls.id] = cls.train_id if 0 <= cls.train_id < 255 else 255
    assert len(ours) == len(reference) == 4
    # torchvision lists files in os.listdir order; seglab sorts them: pair samples by file name
    by_id = {Path(path).name.removesuffix("_leftImg8bit.png"): j for j, path in enumerate(reference.images)}
    for i in range(len(ours)):
        image, (semantic, instance) = reference[by_id[ours.sample_id(i)]]
        our_image, our_label = ours[i]
        assert torch.equal(our_image, torch.from_numpy(np.array(image)).permute(2, 0, 1))
        assert torch.equal(our_label, torch.from_numpy(train_id[np.array(semantic)]))
        # instanceIds below 1000 are stuff/crowd label ids, not objects: seglab's contract makes them 0
        instance = np.array(instance).astype(np.int32)
        assert torch.equal(ours.load_instances(i), torch.from_numpy(np.where(instance >= 1000, instance, 0)))


def test_cityscapes_rejects_undefined_label_ids(tmp_path):
    make_cityscapes(tmp_path, per_city=1, cities=("ulm",))
    path = next((tmp_path / "gtFine" / "train" / "ulm").glob("*_labelIds.png"))
    arr = np.asarray(Image.open(path)).copy()
    arr[0, :5] = 40
    Image.fromarray(arr).save(path)
    with pytest.raises(BadSampleError, match=r"label values 40 \(5 px\)"):
        build_dataset("cityscapes", tmp_path, "train")[0]


def test_ade20k_shifts_classes_and_ignores_other(tmp_path):
    raw = make_ade20k(tmp_path)
    ds = build_dataset("ade20k", tmp_path, "train")
    assert len(ds) == 3 and ds.num_classes == 150 and ds.classes[0] == "wall" and ds.classes[-1] == "flag"
    assert not ds.has_instances
    for i in range(3):
        expected = np.where(raw[i] == 0, 255, raw[i].astype(np.int16) - 1).astype(np.uint8)
        assert torch.equal(ds[i][1], torch.from_numpy(expected))


def test_folder_reads_classes_txt_index_pngs_and_png_images(tmp_path):
    labels = make_folder(tmp_path, colours=False, rgb_labels=False)
    ds = build_dataset("folder", tmp_path, "val")
    assert ds.classes == tuple(n for n, _ in FOLDER_CLASSES) and len(ds) == 2
    assert {s.image.suffix for s in ds.samples} == {".jpg", ".png"}
    for i in range(2):
        assert torch.equal(ds[i][1], torch.from_numpy(labels[2 + i]))


def test_folder_maps_rgb_labels_by_the_colours_in_classes_txt(tmp_path):
    labels = make_folder(tmp_path, colours=True, rgb_labels=True)
    ds = build_dataset("folder", tmp_path, "train")
    assert ds.palette.tolist() == [list(c) for _, c in FOLDER_CLASSES]
    for i in range(2):
        assert torch.equal(ds[i][1], torch.from_numpy(labels[i]))


def test_folder_rejects_rgb_labels_without_a_colour_map(tmp_path):
    make_folder(tmp_path, colours=False, rgb_labels=True)
    with pytest.raises(BadSampleError, match="RGB colour image"):
        build_dataset("folder", tmp_path, "train")[0]


def test_folder_without_classes_txt_says_what_to_write(tmp_path):
    make_folder(tmp_path, colours=False, rgb_labels=False)
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="classes.txt is missing.*one per line"):
        build_dataset("folder", tmp_path, "train")
