"""Cityscapes fine annotations (Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene
Understanding", CVPR 2016): leftImg8bit/ + gtFine/, the 34 label ids mapped to the 19 train ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from seglab.data import io
from seglab.data.base import DATASETS, DatasetError, DatasetInfo, Sample, SegDataset

# (label id, train id, name, colour) of the 19 evaluated classes; every other id maps to ignore (255).
_TRAIN_CLASSES = (
    (7, "road", (128, 64, 128)), (8, "sidewalk", (244, 35, 232)), (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)), (13, "fence", (190, 153, 153)), (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)), (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)), (22, "terrain", (152, 251, 152)), (23, "sky", (70, 130, 180)),
    (24, "person", (220, 20, 60)), (25, "rider", (255, 0, 0)), (26, "car", (0, 0, 142)),
    (27, "truck", (0, 0, 70)), (28, "bus", (0, 60, 100)), (31, "train", (0, 80, 100)),
    (32, "motorcycle", (0, 0, 230)), (33, "bicycle", (119, 11, 32)),
)
NUM_LABEL_IDS = 34  # ids 0..33 are defined; a larger value in a labelIds PNG is a fault


def label_id_to_train_id() -> np.ndarray:
    """Return the 256-entry lookup table: label id -> train id (255 ignore), -1 for undefined ids."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[:NUM_LABEL_IDS] = 255
    for train_id, (label_id, _, _) in enumerate(_TRAIN_CLASSES):
        lut[label_id] = train_id
    return lut


@DATASETS.register("cityscapes")
class Cityscapes(SegDataset):
    """Cityscapes gtFine: 2,975 train / 500 val images of 2048x1024, 19 classes, 255 ignore."""

    info = DatasetInfo("cityscapes", tuple(n for _, n, _ in _TRAIN_CLASSES),
                       tuple(c for _, _, c in _TRAIN_CLASSES), ignore_index=255)
    image_format = ("PNG",)
    splits = ("train", "val", "test")
    lut = label_id_to_train_id()

    def __init__(self, root: Path | str, split: str = "train", *, skip_bad: bool = False) -> None:
        super().__init__(root, split, skip_bad=skip_bad)
        if split not in self.splits:
            raise DatasetError(f"cityscapes has no split {split!r}; choose one of: {', '.join(self.splits)}")
        image_dir = self.root / "leftImg8bit" / split
        if not image_dir.is_dir() or not (self.root / "gtFine" / split).is_dir():
            raise DatasetError(f"no Cityscapes {split} split under {self.root}: expected leftImg8bit/{split}/"
                               f"<city>/*_leftImg8bit.png and gtFine/{split}/<city>/*_gtFine_labelIds.png "
                               "(leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip unpacked together)")
        samples = []
        for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
            stem = image.name.removesuffix("_leftImg8bit.png")
            gt = self.root / "gtFine" / split / image.parent.name / stem
            samples.append(Sample(stem, image, gt.with_name(f"{stem}_gtFine_labelIds.png"),
                                  gt.with_name(f"{stem}_gtFine_instanceIds.png")))
        self._finish(samples)

    def read_label(self, sample: Sample) -> torch.Tensor:
        """Return the train ids of `sample` (label ids mapped, 255 ignore)."""
        return self.map_label(io.read_index_png(sample.label, self.label_format), self.lut, sample.label)

    def read_instances(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Return (instance ids, train ids) from gtFine instanceIds (ids >= 1000 are instances)."""
        sample = self.samples[index]
        if not sample.instances.is_file():
            return None
        ids = io.read_instance_png(sample.instances)
        return np.where(ids >= 1000, ids, 0), self.read_label(sample).numpy()
