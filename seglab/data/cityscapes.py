"""Cityscapes, fine annotations (Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene
Understanding", CVPR 2016): leftImg8bit/ + gtFine/, its 34 label ids mapped to the 19 train ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seglab.data import io
from seglab.data.base import DATASETS, FileDataset, Sample, label_lut, locate
from seglab.errors import DatasetError

# (label id, name, colour) of the 19 evaluated classes, in train-id order; the other ids map to 255.
TRAIN_CLASSES = (
    (7, "road", (128, 64, 128)),
    (8, "sidewalk", (244, 35, 232)),
    (11, "building", (70, 70, 70)),
    (12, "wall", (102, 102, 156)),
    (13, "fence", (190, 153, 153)),
    (17, "pole", (153, 153, 153)),
    (19, "traffic light", (250, 170, 30)),
    (20, "traffic sign", (220, 220, 0)),
    (21, "vegetation", (107, 142, 35)),
    (22, "terrain", (152, 251, 152)),
    (23, "sky", (70, 130, 180)),
    (24, "person", (220, 20, 60)),
    (25, "rider", (255, 0, 0)),
    (26, "car", (0, 0, 142)),
    (27, "truck", (0, 0, 70)),
    (28, "bus", (0, 60, 100)),
    (31, "train", (0, 80, 100)),
    (32, "motorcycle", (0, 0, 230)),
    (33, "bicycle", (119, 11, 32)),
)
NUM_LABEL_IDS = 34  # label ids 0..33 exist; any other value in a labelIds PNG is a fault


def train_id_lut() -> np.ndarray:
    """Return the label map label id -> train id: the 19 classes, 255 for the other 15 ids, -1 above 33."""
    mapping = dict.fromkeys(range(NUM_LABEL_IDS), 255)
    mapping.update({label_id: train_id for train_id, (label_id, _, _) in enumerate(TRAIN_CLASSES)})
    return label_lut(mapping)


@DATASETS.register("cityscapes")
class Cityscapes(FileDataset):
    """Cityscapes gtFine: train 2,975 / val 500 images of 2048x1024, 19 classes, 255 ignore."""

    name = "cityscapes"
    classes = tuple(name for _, name, _ in TRAIN_CLASSES)
    palette = np.array([colour for _, _, colour in TRAIN_CLASSES], dtype=np.uint8)
    ignore_index = 255
    has_instances = True
    image_formats = ("PNG",)
    label_map = train_id_lut()

    def __init__(self, root: Path | str | None, split: str = "train", *, strict: bool = True) -> None:
        base = locate(root, self.name, ("", "cityscapes"), "leftImg8bit")
        image_dir, label_dir = base / "leftImg8bit" / split, base / "gtFine" / split
        if not image_dir.is_dir() or not label_dir.is_dir():
            raise DatasetError(
                f"cityscapes: no {split!r} split: expected {image_dir}/<city>/*_leftImg8bit.png and "
                f"{label_dir}/<city>/*_gtFine_labelIds.png (leftImg8bit_trainvaltest.zip and "
                "gtFine_trainvaltest.zip unpacked into one folder)"
            )
        samples = []
        for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
            stem = image.name.removesuffix("_leftImg8bit.png")
            gt = label_dir / image.parent.name
            samples.append(
                Sample(
                    stem, image, gt / f"{stem}_gtFine_labelIds.png", gt / f"{stem}_gtFine_instanceIds.png", str(image)
                )
            )
        if not samples:
            raise DatasetError(f"cityscapes: no *_leftImg8bit.png under {image_dir}/<city>/")
        super().__init__(Path(root), split, samples, strict=strict)

    def read_instances(self, sample: Sample) -> np.ndarray:
        """Return gtFine instanceIds as int32 [H,W]: values >= 1000 (label id * 1000 + k) are instances."""
        ids = io.read_instance_png(sample.instances)
        return np.where(ids >= 1000, ids, 0).astype(np.int32)
