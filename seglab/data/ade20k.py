"""ADE20K scene parsing (Zhou et al., "Scene Parsing through ADE20K Dataset", CVPR 2017), as shipped in
ADEChallengeData2016: 150 classes stored as 1..150, and 0 ("other"), which becomes the ignore index."""

from __future__ import annotations

from pathlib import Path

from seglab.data.base import DATASETS, FileDataset, Sample, label_lut, locate, voc_palette
from seglab.errors import DatasetError

ADE20K_CLASSES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)
SPLIT_FOLDERS = {"train": "training", "val": "validation"}


@DATASETS.register("ade20k", aliases=("ade",))
class ADE20K(FileDataset):
    """ADE20K SceneParsing: train 20,210 / val 2,000 images, 150 classes; "other" (0) is ignored.

    The palette is the VOC colour map extended to 150 classes (visualisation only).
    """

    name = "ade20k"
    classes = ADE20K_CLASSES
    palette = voc_palette(len(ADE20K_CLASSES))
    ignore_index = 255
    label_map = label_lut({0: 255, **{k + 1: k for k in range(len(ADE20K_CLASSES))}})

    def __init__(self, root: Path | str | None, split: str = "train", *, strict: bool = True) -> None:
        base = locate(root, self.name, ("ADEChallengeData2016", ""), "annotations")
        if split not in SPLIT_FOLDERS:
            raise DatasetError(f"ade20k has no split {split!r}; choose one of: {', '.join(SPLIT_FOLDERS)}")
        folder = SPLIT_FOLDERS[split]
        image_dir, label_dir = base / "images" / folder, base / "annotations" / folder
        images = sorted(image_dir.glob("*.jpg"))
        if not images:
            raise DatasetError(
                f"ade20k: no images in {image_dir}: expected ADEChallengeData2016/images/{folder}/"
                f"*.jpg and annotations/{folder}/*.png (ADEChallengeData2016.zip unpacked)"
            )
        super().__init__(
            Path(root),
            split,
            [Sample(p.stem, p, label_dir / f"{p.stem}.png", None, str(p)) for p in images],
            strict=strict,
        )
