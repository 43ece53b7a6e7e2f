"""ADE20K SceneParsing (Zhou et al., "Scene Parsing through ADE20K Dataset", CVPR 2017), as shipped in
ADEChallengeData2016: 150 classes stored as 1..150, 0 = "other", which becomes the ignore index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from seglab.data import io
from seglab.data.base import DATASETS, DatasetError, DatasetInfo, Sample, SegDataset, voc_palette

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair",
    "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box",
    "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet",
    "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)


def ade_lut() -> np.ndarray:
    """Return the lookup table stored id -> class: 0 -> 255 (ignore), k -> k-1, above 150 -> -1 (invalid)."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[0] = 255
    lut[1: len(ADE20K_CLASSES) + 1] = np.arange(len(ADE20K_CLASSES))
    return lut


@DATASETS.register("ade20k", aliases=("ade",))
class ADE20K(SegDataset):
    """ADE20K SceneParsing: 20,210 train / 2,000 val images, 150 classes, "other" (0) ignored.

    The palette is the VOC bit-interleaved colour map extended to 150 classes (not the
    benchmark's own colour table); it only affects visualisations.
    """

    info = DatasetInfo("ade20k", ADE20K_CLASSES, voc_palette(len(ADE20K_CLASSES)), ignore_index=255)
    splits = {"train": "training", "val": "validation"}
    lut = ade_lut()

    def __init__(self, root: Path | str, split: str = "train", *, skip_bad: bool = False) -> None:
        super().__init__(root, split, skip_bad=skip_bad)
        if split not in self.splits:
            raise DatasetError(f"ade20k has no split {split!r}; choose one of: {', '.join(self.splits)}")
        base = self.root / "ADEChallengeData2016" if (self.root / "ADEChallengeData2016").is_dir() else self.root
        folder = self.splits[split]
        image_dir, label_dir = base / "images" / folder, base / "annotations" / folder
        if not image_dir.is_dir() or not label_dir.is_dir():
            raise DatasetError(f"no ADE20K {split} split under {self.root}: expected ADEChallengeData2016/"
                               f"images/{folder}/*.jpg and ADEChallengeData2016/annotations/{folder}/*.png "
                               "(ADEChallengeData2016.zip unpacked)")
        self._finish(Sample(image.stem, image, label_dir / f"{image.stem}.png")
                     for image in sorted(image_dir.glob("*.jpg")))

    def read_label(self, sample: Sample) -> torch.Tensor:
        """Return the classes of `sample` (stored id - 1; "other" -> 255)."""
        return self.map_label(io.read_index_png(sample.label, self.label_format), self.lut, sample.label)
