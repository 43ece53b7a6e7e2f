"""`seglab data check` finds every planted fault with a clear message (reliability rules 6-8), decompression
bombs and instance masks included; classes.txt duplicates; training refuses 0/255 binary masks and skips
oversized images like any other bad sample."""

from __future__ import annotations

import io
import json
import os
import shlex

import numpy as np
import pytest
from data_fixtures import make_folder, make_voc, save_palette_png, voc_id
from PIL import Image

from seglab.cli import main as seglab_main
from seglab.data import BadSampleError, DatasetError, build_dataset, check_dataset, drop_missing
from seglab.data.io import MAX_PIXELS

VOC = "VOCdevkit/VOC2012"


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims `width` x `height` pixels (what a decompression bomb does)."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def plant_faults(root):
    """VOC fixture with one fault per sample (16 is clean); returns {planted file: expected finding kind}."""
    make_voc(root, train=list(range(1, 17)), val=[20])
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
    obj = base / "SegmentationObject"
    png = (obj / f"{voc_id(9)}.png").read_bytes()
    (obj / f"{voc_id(9)}.png").write_bytes(png[: len(png) // 2])  # truncated instance mask
    save_palette_png(np.asarray(Image.open(obj / f"{voc_id(10)}.png"))[:, :-4], obj / f"{voc_id(10)}.png")
    (obj / f"{voc_id(11)}.png").unlink()  # missing instance mask
    # decompression bombs: above PIL's error limit, in PIL's warning range, above seglab's own limit
    (img / f"{voc_id(12)}.jpg").write_bytes(jpeg_claiming(20000, 10000))
    (img / f"{voc_id(13)}.jpg").write_bytes(jpeg_claiming(10000, 10000))
    (img / f"{voc_id(14)}.jpg").write_bytes(jpeg_claiming(10000, MAX_PIXELS // 10000 + 1))
    Image.open(img / f"{voc_id(15)}.jpg").save(img / f"{voc_id(15)}.jpg", format="PNG")  # a PNG named .jpg
    return {
        str(img / f"{voc_id(1)}.jpg"): "image_truncated",
        str(cls / f"{voc_id(2)}.png"): "label_unreadable",
        str(img / f"{voc_id(3)}.jpg"): "image_unreadable",
        str(cls / f"{voc_id(4)}.png"): "label_missing",
        str(cls / f"{voc_id(5)}.png"): "size_mismatch",
        str(cls / f"{voc_id(6)}.png"): "label_values",
        str(cls / f"{voc_id(7)}.png"): "rgb_label",
        str(cls / f"{voc_id(8)}.png"): "binary_mask",
        str(obj / f"{voc_id(9)}.png"): "instances_unreadable",
        str(obj / f"{voc_id(10)}.png"): "instances_size_mismatch",
        str(obj / f"{voc_id(11)}.png"): "instances_missing",
        str(img / f"{voc_id(12)}.jpg"): "image_too_large",
        str(img / f"{voc_id(13)}.jpg"): "image_too_large",
        str(img / f"{voc_id(14)}.jpg"): "image_too_large",
        str(img / f"{voc_id(15)}.jpg"): "image_unreadable",
    }


# PIL only warns about a decompression bomb below twice its limit: with warnings as errors, it must still be a
# finding of its file, not an exception that ends the check
@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("workers", [1, 2])
def test_check_lists_every_planted_file_with_its_reason(tmp_path, workers):
    planted = plant_faults(tmp_path)
    report = check_dataset(build_dataset("voc", tmp_path, "train", strict=False), workers=workers)
    found = {f.path: f.kind for f in report.findings}
    assert found == planted  # every planted file, nothing else
    assert report.counts() == {kind: list(planted.values()).count(kind) for kind in planted.values()}
    assert len(report.errors) == 14 and len(report.warnings) == 1
    assert report.samples == 16 and report.decoded == 15  # the sample with a missing label is not decoded
    by_kind = {f.kind: f for f in report.findings}
    assert "77 (6 px)" in by_kind["label_values"].message
    assert by_kind["label_values"].details["values"] == {77: 6}
    assert "0..20" in by_kind["label_values"].message and "ignore index 255" in by_kind["label_values"].message
    assert "RGB colour image" in by_kind["rgb_label"].message
    assert f"label is 39x56 (HxW) but image {voc_id(5)}.jpg is 42x56" in by_kind["size_mismatch"].message
    assert "binary mask" in by_kind["binary_mask"].message and by_kind["binary_mask"].severity == "warning"
    assert (
        f"instance mask is 41x52 (HxW) but image {voc_id(10)}.jpg is 41x56"
        in by_kind["instances_size_mismatch"].message
    )
    too_large = sorted(f.message for f in report.findings if f.kind == "image_too_large")
    assert "image is too large to decode safely (Image size (200000000 pixels) exceeds limit" in too_large[0]
    assert "image is too large to decode safely (Image size (100000000 pixels) exceeds limit" in too_large[1]
    assert f"image is 10000x{MAX_PIXELS // 10000 + 1}, above the limit of {MAX_PIXELS} pixels" in too_large[2]
    assert "not a JPEG file" in by_kind["image_unreadable"].message


def test_check_cli_exits_non_zero_and_prints_json(tmp_path, capsys):
    planted = plant_faults(tmp_path)
    assert (
        seglab_main(["data", "check", "--dataset", "voc", "--data-root", str(tmp_path), "--json", "--workers", "1"])
        == 1
    )
    out = json.loads(capsys.readouterr().out)
    assert out["errors"] == 14 and out["warnings"] == 1 and out["samples"] == 16
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


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["background", "crack", "rust", "crack"], "classes.txt:5: class name 'crack' is also on line 3"),
        (
            ["background 0 0 0", "crack 255 0 0", "rust 255 0 0"],
            "classes.txt:4: class 'rust' has the colour 255 0 0 of class 'crack' on line 3",
        ),
    ],
)
def test_duplicate_class_names_or_colours_are_refused_naming_the_lines(tmp_path, lines, message):
    make_folder(tmp_path, colours=False, rgb_labels=False)
    (tmp_path / "classes.txt").write_text("# my classes\n" + "\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=message):
        build_dataset("folder", tmp_path, "train")
    assert seglab_main(["data", "check", "--dataset", "folder", "--data-root", str(tmp_path)]) == 1


TRAIN = shlex.split(
    "train --basenet lcnet_050 --decoder fcn8s --pretrained none --device cpu --dataset folder --crop 32 "
    "--batch-size 2 --iters 2 --workers 0 --eval-every 0"
)


def test_training_refuses_0_255_labels_unless_allowed(tmp_path, capsys):
    make_folder(tmp_path / "data", colours=False, rgb_labels=False, count=6)
    for label in (tmp_path / "data" / "SegmentationClass").iterdir():  # foreground saved as 255, not 1
        save_palette_png(np.where(np.asarray(Image.open(label)) > 0, 255, 0).astype(np.uint8), label)
    args = [*TRAIN, "--data-root", str(tmp_path / "data"), "--runs-root", str(tmp_path / "runs")]
    assert seglab_main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "the 3 labels read (e.g. part_" in err and "hold only 0 and the ignore index 255" in err
    assert "Store the foreground as class 1 (e.g. label // 255), or pass --allow-ignore-only-labels" in err
    assert not (tmp_path / "runs").exists()  # refused before anything was created
    assert seglab_main([*args, "--allow-ignore-only-labels"]) == 0


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_an_oversized_training_image_stops_the_run_or_is_skipped_and_counted(tmp_path, capsys):
    make_folder(tmp_path / "data", colours=False, rgb_labels=False, count=8)
    bomb = tmp_path / "data" / "JPEGImages" / "part_000.jpg"
    bomb.write_bytes(jpeg_claiming(10000, 10000))
    # a 64 px crop: a batch left with one sample still gives BatchNorm more than one value per channel
    args = [*TRAIN, "--data-root", str(tmp_path / "data"), "--runs-root", str(tmp_path / "runs"), "--iters", "4"]
    args += ["--crop", "64"]
    assert seglab_main([*args, "--run-name", "strict"]) == 1
    err = capsys.readouterr().err
    assert f"{bomb}: image is too large to decode safely" in err and "Traceback" not in err
    assert seglab_main([*args, "--run-name", "skip", "--skip-bad-samples"]) == 0
    records = [json.loads(line) for line in (tmp_path / "runs" / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped"] == 2  # 4 training samples, 2 steps per epoch: drawn once in each epoch
    assert (tmp_path / "runs" / "skip" / "runlog").read_text().count(f"skipped {bomb}: image is too large") == 2
