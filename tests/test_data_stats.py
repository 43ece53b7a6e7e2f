"""`seglab data stats`: exact pixel counts, class weights and object sizes on a fixture."""

from __future__ import annotations

import numpy as np
import torch
from data_fixtures import make_voc, voc_id
from PIL import Image

from seglab.cli import main as seglab_main
from seglab.data import build_dataset, dataset_stats
from seglab.data.stats import instance_areas


def test_instance_areas_take_the_majority_class_and_skip_ignored_pixels():
    ids = torch.tensor([[1, 1, 1, 0], [1, 2, 2, 0], [3, 3, 3, 3]])
    label = torch.tensor([[4, 4, 255, 0], [5, 7, 7, 0], [255, 255, 255, 255]], dtype=torch.uint8)
    assert sorted(instance_areas(ids, label, num_classes=21)) == [(4, 3), (7, 2)]  # id 3: all ignored


def test_stats_match_a_direct_count(tmp_path, capsys):
    make_voc(tmp_path, train=[1, 2, 3], val=[4])
    ds = build_dataset("voc", tmp_path, "train")
    stats = dataset_stats(ds)
    base = tmp_path / "VOCdevkit" / "VOC2012"
    cls_dir, obj_dir = base / "SegmentationClass", base / "SegmentationObject"
    labels = [np.asarray(Image.open(cls_dir / f"{voc_id(k)}.png")) for k in (1, 2, 3)]
    counts = sum(np.bincount(lab.ravel(), minlength=256) for lab in labels)
    assert [c["pixels"] for c in stats["classes"]] == counts[:21].tolist()
    assert stats["ignored_pixels"] == counts[255] and stats["pixels"] == counts[:21].sum()
    assert stats["classes"][0]["images"] == 3  # background is in every image
    present = [c for c in stats["classes"] if c["pixels"]]
    median = np.median([c["pixels"] / sum(lab.size for lab in labels if (lab == c["id"]).any()) for c in present])
    for c in present:
        f = c["pixels"] / sum(lab.size for lab in labels if (lab == c["id"]).any())
        assert abs(c["median_freq_weight"] - median / f) < 1e-9
    expected_objects = 0
    for k, lab in zip((1, 2, 3), labels, strict=True):
        inst = np.asarray(Image.open(obj_dir / f"{voc_id(k)}.png"))
        expected_objects += len({v for v in np.unique(inst) if v not in (0, 255) and ((inst == v) & (lab < 21)).any()})
    assert stats["objects"]["count"] == expected_objects
    assert seglab_main(["data", "stats", "--dataset", "voc", "--data-root", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "background" in text and "small < 32^2" in text
