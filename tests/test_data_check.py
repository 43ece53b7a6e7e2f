"""`seglab data check` finds every planted fault with a clear message (reliability rules 6-8)."""

from __future__ import annotations

import json
import os
import shlex

import numpy as np
import pytest
from data_fixtures import make_folder, make_voc, save_palette_png, voc_id
from PIL import Image

from seglab.cli import main as seglab_main
from seglab.data import BadSampleError, DatasetError, build_dataset, check_dataset, drop_missing

VOC = "VOCdevkit/VOC2012"


def plant_faults(root):
    """VOC fixture with one fault per sample; returns {planted file: expected finding kind}."""
    make_voc(root, train=list(range(1, 12)), val=[20])
    base = root / VOC
    img, cls = base / "JPEGImages", base / "SegmentationClass"
    jpeg = (img / f"{voc_id(1)}.jpg").read_bytes()
    (img / f"{voc_id(1)}.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # truncated JPEG
    (cls / f"{voc_id(2)}.png").write_bytes(b"")  # zero-byte PNG
    (img / f"{voc_id(3)}.jpg").write_bytes(np.random.default_rng(0).bytes(3000))  # random bytes
    (cls / f"{voc_id(4)}.png").unlink()  # missing label
    label = np.asarray(Image.open(cls / f"{voc_id(5)}.png"))
    save_palette_png(label[:-3], cls / f"{voc_id(5)}.png")  # size mismatch
    bad = np.asarray(Image.open(cls / f"{voc_id(6)}.png")).copy()
    bad[:2, :3] = 77  # a value that is not one of 21 classes
    save_palette_png(bad, cls / f"{voc_id(6)}.png")
    rgb = np.asarray(Image.open(cls / f"{voc_id(7)}.png").convert("RGB"))
    Image.fromarray(rgb).save(cls / f"{voc_id(7)}.png")  # RGB colour label
    binary = np.where(np.asarray(Image.open(cls / f"{voc_id(8)}.png")) > 0, 255, 0).astype(np.uint8)
    save_palette_png(binary, cls / f"{voc_id(8)}.png")  # 0/255 binary mask
    return {
        str(img / f"{voc_id(1)}.jpg"): "image_truncated",
        str(cls / f"{voc_id(2)}.png"): "label_unreadable",
        str(img / f"{voc_id(3)}.jpg"): "image_unreadable",
        str(cls / f"{voc_id(4)}.png"): "label_missing",
        str(cls / f"{voc_id(5)}.png"): "size_mismatch",
        str(cls / f"{voc_id(6)}.png"): "label_values",
        str(cls / f"{voc_id(7)}.png"): "rgb_label",
        str(cls / f"{voc_id(8)}.png"): "binary_mask",
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_check_lists_every_planted_file_with_its_reason(tmp_path, workers):
    planted = plant_faults(tmp_path)
    report = check_dataset(build_dataset("voc", tmp_path, "train", strict=False), workers=workers)
    found = {f.path: f.kind for f in report.findings}
    assert found == planted  # every planted file, nothing else
    assert report.counts() == {kind: 1 for kind in planted.values()}
    assert len(report.errors) == 7 and len(report.warnings) == 1
    assert report.samples == 11 and report.decoded == 10  # the sample with a missing label is not decoded
    by_kind = {f.kind: f for f in report.findings}
    assert "77 (6 px)" in by_kind["label_values"].message
    assert by_kind["label_values"].details["values"] == {77: 6}
    assert "0..20" in by_kind["label_values"].message and "ignore index 255" in by_kind["label_values"].message
    assert "RGB colour image" in by_kind["rgb_label"].message
    assert f"label is 39x56 (HxW) but image {voc_id(5)}.jpg is 42x56" in by_kind["size_mismatch"].message
    assert "binary mask" in by_kind["binary_mask"].message and by_kind["binary_mask"].severity == "warning"


def test_check_cli_exits_non_zero_and_prints_json(tmp_path, capsys):
    planted = plant_faults(tmp_path)
    assert (
        seglab_main(["data", "check", "--dataset", "voc", "--data-root", str(tmp_path), "--json", "--workers", "1"])
        == 1
    )
    out = json.loads(capsys.readouterr().out)
    assert out["errors"] == 7 and out["warnings"] == 1 and out["samples"] == 11
    assert {f["path"] for f in out["findings"]} == set(planted)
    assert seglab_main(["data", "check", "--dataset", "voc", "--data-root", str(tmp_path), "--split", "val"]) == 0
    text = capsys.readouterr().out
    assert "0 errors, 0 warnings" in text


def test_binary_mask_alone_fails_only_with_strict(tmp_path, capsys):
    make_voc(tmp_path, train=[1], val=[2])
    cls = tmp_path / VOC / "SegmentationClass" / f"{voc_id(1)}.png"
    save_palette_png(np.where(np.asarray(Image.open(cls)) > 0, 255, 0).astype(np.uint8), cls)
    args = ["data", "check", "--dataset", "voc", "--data-root", str(tmp_path), "--workers", "1"]
    assert seglab_main(args) == 0
    assert "binary_mask" in capsys.readouterr().out
    assert seglab_main([*args, "--strict"]) == 1


def test_loading_a_bad_sample_names_the_file_and_values(tmp_path):
    plant_faults(tmp_path)
    ds = build_dataset("voc", tmp_path, "train")
    with pytest.raises(BadSampleError, match=rf"{voc_id(6)}\.png: label values 77 \(6 px\) are neither"):
        ds[5]
    with pytest.raises(BadSampleError, match=rf"{voc_id(1)}\.jpg: truncated image"):
        ds[0]
    with pytest.raises(BadSampleError, match="RGB colour image"):
        ds[6]


def test_unsafe_list_entries_are_rejected_with_list_file_and_line(tmp_path):
    make_voc(tmp_path, train=[1, 2], val=[3])
    base = tmp_path / VOC
    outside = tmp_path.parent / f"{tmp_path.name}_outside"
    outside.mkdir()
    (outside / "evil.jpg").write_bytes(b"x")
    os.symlink(outside / "evil.jpg", base / "JPEGImages" / "linked.jpg")
    list_file = base / "ImageSets" / "Segmentation" / "train.txt"
    list_file.write_text(f"{voc_id(1)}\n../x\n/etc/passwd\nlinked\n{voc_id(2)}\n")
    with pytest.raises(DatasetError) as err:
        build_dataset("voc", tmp_path, "train")
    message = str(err.value)
    for line, entry in ((2, "../x"), (3, "/etc/passwd"), (4, "linked")):
        assert f"{list_file}:{line}: entry {entry!r}" in message
    assert "3 list entries leave" in message
    report = check_dataset(build_dataset("voc", tmp_path, "train", strict=False), workers=1)
    assert report.counts()["path_outside_root"] == 3 and report.samples == 2


def test_drop_missing_raises_or_skips_and_counts(tmp_path):
    make_folder(tmp_path, colours=False, rgb_labels=False, count=6)
    (tmp_path / "SegmentationClass" / "part_001.png").unlink()
    ds = build_dataset("folder", tmp_path, "train")
    with pytest.raises(DatasetError, match=r"(?s)part_001\.png: label of part_001 is missing.*--skip-bad-samples"):
        drop_missing(ds, skip_bad=False)
    findings = drop_missing(ds, skip_bad=True)
    assert [f.kind for f in findings] == ["label_missing"]
    assert [ds.sample_id(i) for i in range(len(ds))] == ["part_000", "part_002"]


def test_stats_cli_counts_pixels_and_objects(tmp_path, capsys):
    assert (
        seglab_main(shlex.split("data stats --dataset synthetic --split val --dataset-options length=6 size=64 --json"))
        == 0
    )
    stats = json.loads(capsys.readouterr().out)
    assert stats["images"] == 6 and stats["pixels"] == 6 * 64 * 64
    assert sum(c["pixels"] for c in stats["classes"]) == stats["pixels"]
    assert stats["objects"]["count"] == sum(stats["objects"]["by_size"].values()) > 0
