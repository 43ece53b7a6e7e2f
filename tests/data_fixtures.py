"""Builders of tiny datasets in the exact on-disk formats the real ones ship in (VOC 2012, SBD,
Cityscapes, ADE20K, a VOC-layout folder), for the data tests. Content is random but seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

from seglab.data.base import voc_palette

VOC_PALETTE = voc_palette(256).reshape(-1).tolist()


def rng_for(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def image_array(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random RGB image (compresses like a photo) as uint8 [H, W, 3]."""
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    ys, xs = np.arange(height) / 8, np.arange(width) / 8
    img = coarse[ys.astype(int)][:, xs.astype(int)]
    img += rng.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def blocks_label(
    rng: np.random.Generator, height: int, width: int, classes: list[int], boundary: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A label of rectangles of the given class values on 0, and its instance ids [H, W]."""
    label = np.zeros((height, width), np.uint8)
    instances = np.zeros((height, width), np.uint8)
    for k, cls in enumerate(classes, start=1):
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
        h, w = rng.integers(4, height - y + 1), rng.integers(4, width - x + 1)
        label[y : y + h, x : x + w] = cls
        instances[y : y + h, x : x + w] = k
        if boundary is not None:
            for arr in (label, instances):
                arr[y, x : x + w] = boundary
                arr[y + h - 1, x : x + w] = boundary
    return label, instances


def save_palette_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8))
    img.putpalette(VOC_PALETTE)
    img.save(path, format="PNG")


def save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def save_jpeg(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=90)


def write_list(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def voc_id(k: int) -> str:
    return f"2008_{k:06d}"


def make_voc(
    root: Path, train: list[int], val: list[int], size: tuple[int, int] = (40, 56), sbd_only: list[int] = ()
) -> Path:
    """VOCdevkit/VOC2012 with JPEGImages, SegmentationClass/Object (palette PNGs, 255 boundaries) and
    ImageSets/Segmentation lists. Ids in `sbd_only` get an image but no VOC annotation (as in VOC)."""
    base = root / "VOCdevkit" / "VOC2012"
    for k in [*train, *val, *sbd_only]:
        rng = rng_for(1, k)
        height, width = size[0] + k % 3, size[1] + k % 5
        save_jpeg(image_array(rng, height, width), base / "JPEGImages" / f"{voc_id(k)}.jpg")
        if k in sbd_only:
            continue
        label, instances = blocks_label(rng, height, width, [1 + k % 20, 1 + (3 * k) % 20], boundary=255)
        save_palette_png(label, base / "SegmentationClass" / f"{voc_id(k)}.png")
        save_palette_png(instances, base / "SegmentationObject" / f"{voc_id(k)}.png")
    lists = base / "ImageSets" / "Segmentation"
    write_list(lists / "train.txt", [voc_id(k) for k in train])
    write_list(lists / "val.txt", [voc_id(k) for k in val])
    write_list(lists / "trainval.txt", [voc_id(k) for k in [*train, *val]])
    return base


def make_sbd(root: Path, train: list[int], val: list[int], size: tuple[int, int] = (40, 56)) -> Path:
    """benchmark_RELEASE/dataset with img/*.jpg, cls/*.mat (GTcls), inst/*.mat (GTinst), train/val.txt."""
    base = root / "benchmark_RELEASE" / "dataset"
    for k in [*train, *val]:
        rng = rng_for(2, k)
        height, width = size[0] + k % 3, size[1] + k % 5
        save_jpeg(image_array(rng, height, width), base / "img" / f"{voc_id(k)}.jpg")
        label, instances = blocks_label(rng, height, width, [1 + (5 * k) % 20, 1 + (7 * k) % 20])
        (base / "cls").mkdir(parents=True, exist_ok=True)
        (base / "inst").mkdir(parents=True, exist_ok=True)
        savemat(
            base / "cls" / f"{voc_id(k)}.mat",
            {
                "GTcls": {
                    "Segmentation": label,
                    "Boundaries": np.zeros((20, 1), dtype=object),
                    "CategoriesPresent": np.unique(label[label > 0]).astype(np.uint8),
                }
            },
        )
        savemat(
            base / "inst" / f"{voc_id(k)}.mat",
            {
                "GTinst": {
                    "Segmentation": instances,
                    "Boundaries": np.zeros((2, 1), dtype=object),
                    "Categories": np.array([[1], [2]], dtype=np.uint8),
                }
            },
        )
    write_list(base / "train.txt", [voc_id(k) for k in train])
    write_list(base / "val.txt", [voc_id(k) for k in val])
    return base


def make_cityscapes(
    root: Path,
    split: str = "train",
    cities: tuple[str, ...] = ("aachen", "bremen"),
    per_city: int = 2,
    size: tuple[int, int] = (32, 64),
) -> list[np.ndarray]:
    """leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine *_labelIds / *_instanceIds PNGs.
    Returns the label-id arrays in sorted file order."""
    labels = []
    for c, city in enumerate(cities):
        for k in range(per_city):
            rng = rng_for(3, c, k)
            stem = f"{city}_{k:06d}_000019"
            save_png(image_array(rng, *size), root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            label_ids = rng.integers(0, 34, size).astype(np.uint8)
            gt = root / "gtFine" / split / city
            save_png(label_ids, gt / f"{stem}_gtFine_labelIds.png")
            instance_ids = label_ids.astype(np.int32)
            instance_ids[:8, :8] = 26 * 1000 + 1  # a car
            instance_ids[-8:, -8:] = 24 * 1000 + 2  # a person
            Image.fromarray(instance_ids.astype(np.uint16)).save(gt / f"{stem}_gtFine_instanceIds.png")
            labels.append(label_ids)
    return labels


def make_ade20k(
    root: Path, split_folder: str = "training", count: int = 3, size: tuple[int, int] = (30, 40)
) -> list[np.ndarray]:
    """ADEChallengeData2016/images/<split>/*.jpg and annotations/<split>/*.png (0..150)."""
    base = root / "ADEChallengeData2016"
    labels = []
    prefix = "ADE_train" if split_folder == "training" else "ADE_val"
    for k in range(count):
        rng = rng_for(4, k)
        name = f"{prefix}_{k + 1:08d}"
        save_jpeg(image_array(rng, *size), base / "images" / split_folder / f"{name}.jpg")
        label = rng.integers(0, 151, size).astype(np.uint8)
        save_png(label, base / "annotations" / split_folder / f"{name}.png")
        labels.append(label)
    return labels


FOLDER_CLASSES = (("background", (0, 0, 0)), ("crack", (255, 0, 0)), ("rust", (0, 255, 0)))


def make_folder(
    root: Path, *, colours: bool, rgb_labels: bool, count: int = 4, size: tuple[int, int] = (24, 32)
) -> list[np.ndarray]:
    """A VOC-layout set of one's own: classes.txt, JPEGImages (.jpg and .png), SegmentationClass
    (index or RGB PNGs), ImageSets/Segmentation/{train,val}.txt. Returns the index labels."""
    lines = [f"{n} {' '.join(map(str, c))}" if colours else n for n, c in FOLDER_CLASSES]
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("# my classes\n" + "\n".join(lines) + "\n")
    labels, ids = [], []
    for k in range(count):
        rng = rng_for(5, k)
        name = f"part_{k:03d}"
        image = image_array(rng, *size)
        if k % 2:
            save_png(image, root / "JPEGImages" / f"{name}.png")
        else:
            save_jpeg(image, root / "JPEGImages" / f"{name}.jpg")
        label = rng.integers(0, len(FOLDER_CLASSES), size).astype(np.uint8)
        if rgb_labels:
            rgb = np.array([c for _, c in FOLDER_CLASSES], dtype=np.uint8)[label]
            save_png(rgb, root / "SegmentationClass" / f"{name}.png")
        else:
            save_palette_png(label, root / "SegmentationClass" / f"{name}.png")
        labels.append(label)
        ids.append(name)
    write_list(root / "ImageSets" / "Segmentation" / "train.txt", ids[: count // 2])
    write_list(root / "ImageSets" / "Segmentation" / "val.txt", ids[count // 2 :])
    return labels
