"""PASCAL VOC 2012, VOC + SBD (`train_aug`), and user sets in the VOC layout (`folder`).

VOC 2012: Everingham et al., "The PASCAL Visual Object Classes Challenge" (IJCV 2010).
SBD: Hariharan et al., "Semantic Contours from Inverse Detectors" (ICCV 2011); its labels ship as
MATLAB files (`cls/*.mat`, struct `GTcls.Segmentation`), which `convert_sbd` rewrites as PNGs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seglab.data import io
from seglab.data.base import (
    DATASETS,
    DatasetError,
    DatasetInfo,
    Fault,
    Sample,
    SegDataset,
    read_list,
    voc_palette,
)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
VOC_INFO = DatasetInfo("voc", VOC_CLASSES, voc_palette(len(VOC_CLASSES)), ignore_index=255)


def find_voc2012(root: Path) -> Path:
    """Return the VOC2012 folder under `root` (root itself, root/VOC2012 or root/VOCdevkit/VOC2012)."""
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (candidate / "JPEGImages").is_dir() and (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    raise DatasetError(f"no VOC 2012 under {root}: expected {root}/VOCdevkit/VOC2012/ with JPEGImages/, "
                       "SegmentationClass/ and ImageSets/Segmentation/ (the VOCtrainval_11-May-2012.tar "
                       "layout); pass its parent as --data-root")


def find_sbd(root: Path) -> Path:
    """Return SBD's `dataset` folder under `root` (root/benchmark_RELEASE/dataset or root/dataset)."""
    for candidate in (root / "benchmark_RELEASE" / "dataset", root / "dataset", root):
        if (candidate / "cls").is_dir() and (candidate / "train.txt").is_file():
            return candidate
    raise DatasetError(f"no SBD under {root}: expected {root}/benchmark_RELEASE/dataset/ with cls/, img/, "
                       "train.txt and val.txt (the benchmark.tgz layout), beside VOCdevkit/")


class VocLayout(SegDataset):
    """A set in the VOC layout: JPEGImages/, SegmentationClass/, ImageSets/Segmentation/<split>.txt."""

    info = VOC_INFO
    splits = ("train", "val", "trainval")
    image_suffixes = (".jpg",)

    def __init__(self, root: Path | str, split: str = "train", *, skip_bad: bool = False) -> None:
        super().__init__(root, split, skip_bad=skip_bad)
        self.base = self.locate(self.root)
        if split not in self.splits:
            raise DatasetError(f"{self.info.name} has no split {split!r}; choose one of: {', '.join(self.splits)}")
        entries, faults = self.list_ids(split)
        self._finish((self.voc_sample(ids, source) for source, ids in entries), faults)

    def locate(self, root: Path) -> Path:
        """Return the folder holding JPEGImages/ etc. under the data root."""
        return find_voc2012(root)

    def list_ids(self, split: str) -> tuple[list[tuple[str, str]], list[Fault]]:
        """Return the (source, id) pairs of `split` and the faults found in its list file."""
        list_file = self.base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise DatasetError(f"split list {list_file} is missing")
        return read_list(list_file, self.base)

    def voc_sample(self, sample_id: str, source: str = "") -> Sample:
        """Return the Sample of a VOC-layout id (the first image suffix that exists)."""
        image = self.base / "JPEGImages" / f"{sample_id}{self.image_suffixes[0]}"
        for suffix in self.image_suffixes[1:]:
            if not image.exists() and (self.base / "JPEGImages" / f"{sample_id}{suffix}").exists():
                image = self.base / "JPEGImages" / f"{sample_id}{suffix}"
        instances = self.base / "SegmentationObject" / f"{sample_id}.png"
        return Sample(sample_id, image, self.base / "SegmentationClass" / f"{sample_id}.png",
                      instances if instances.is_file() else None, source)

    def read_instances(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Return (instance ids, pixel classes) from SegmentationObject/, or None where absent."""
        sample = self.samples[index]
        if sample.instances is None:
            return None
        classes = self.read_label(sample).numpy()
        return io.read_instance_png(sample.instances), classes


@DATASETS.register("voc", aliases=("pascal_voc", "voc2012"))
class VOC(VocLayout):
    """PASCAL VOC 2012 segmentation: 1,464 train / 1,449 val images, 21 classes, 255 = boundary/ignore."""


@DATASETS.register("voc_aug", aliases=("pascal_voc_aug",))
class VOCAug(VocLayout):
    """VOC 2012 plus SBD: `train_aug` (10,582 images) = SBD train+val + VOC train - VOC val.

    A sample's label is VOC's own PNG where VOC annotates the image (finer, with boundary ignore),
    else SBD's: the PNG that `seglab data convert` wrote to `<sbd>/cls_png/`, or the .mat file.
    `seed_val` is the seed project's 904-image val (VOC val minus SBD train).
    """

    info = DatasetInfo("voc_aug", VOC_CLASSES, VOC_INFO.palette, ignore_index=255)
    splits = ("train_aug", "val", "seed_val", "train", "trainval")

    def __init__(self, root: Path | str, split: str = "train_aug", *, skip_bad: bool = False) -> None:
        self.sbd = find_sbd(Path(root))
        self.mat_labels = 0
        super().__init__(root, split, skip_bad=skip_bad)
        if self.mat_labels:
            print(f"voc_aug: {self.mat_labels} labels are read from SBD .mat files; "
                  f"`seglab data convert --dataset voc_aug --data-root {self.root}` writes them as PNGs once")

    def list_ids(self, split: str) -> tuple[list[tuple[str, str]], list[Fault]]:
        """Return the ids of `split`, building train_aug and seed_val from the VOC and SBD lists."""
        if split not in ("train_aug", "seed_val"):
            return super().list_ids(split)
        voc_dir = self.base / "ImageSets" / "Segmentation"
        lists = {}
        faults: list[Fault] = []
        for name, list_file in (("voc_train", voc_dir / "train.txt"), ("voc_val", voc_dir / "val.txt"),
                                ("sbd_train", self.sbd / "train.txt"), ("sbd_val", self.sbd / "val.txt")):
            if not list_file.is_file():
                raise DatasetError(f"split list {list_file} is missing")
            entries, list_faults = read_list(list_file, list_file.parent)
            lists[name] = dict((i, s) for s, i in entries)
            faults += list_faults
        if split == "seed_val":
            keep = [i for i in lists["voc_val"] if i not in lists["sbd_train"]]
            return [(lists["voc_val"][i], i) for i in keep], faults
        merged = {**lists["sbd_train"], **lists["sbd_val"], **lists["voc_train"]}
        keep = sorted(set(merged) - set(lists["voc_val"]))
        print(f"voc_aug train_aug: {len(keep)} images (SBD train {len(lists['sbd_train'])} + SBD val "
              f"{len(lists['sbd_val'])} + VOC train {len(lists['voc_train'])} - VOC val {len(lists['voc_val'])},"
              " duplicates once)")
        return [(merged[i], i) for i in keep], faults

    def voc_sample(self, sample_id: str, source: str = "") -> Sample:
        """Return the Sample of `sample_id`, taking VOC's files where present, else SBD's."""
        sample = super().voc_sample(sample_id, source)
        if not sample.image.is_file() and (self.sbd / "img" / f"{sample_id}.jpg").is_file():
            sample = Sample(sample_id, self.sbd / "img" / f"{sample_id}.jpg", sample.label,
                            sample.instances, source)
        if sample.label is not None and not sample.label.is_file():
            png = self.sbd / "cls_png" / f"{sample_id}.png"
            label = png if png.is_file() else self.sbd / "cls" / f"{sample_id}.mat"
            self.mat_labels += label.suffix == ".mat"
            inst_png = self.sbd / "inst_png" / f"{sample_id}.png"
            instances = inst_png if inst_png.is_file() else self.sbd / "inst" / f"{sample_id}.mat"
            sample = Sample(sample_id, sample.image, label, instances if instances.is_file() else None, source)
        return sample

    def read_label(self, sample: Sample) -> torch.Tensor:
        """Return the label of `sample` from its PNG or SBD .mat file."""
        if sample.label.suffix == ".mat":
            return self.validate_label(io.read_sbd_mat(sample.label, "GTcls"), sample.label)
        return super().read_label(sample)

    def read_instances(self, index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Return (instance ids, pixel classes) from VOC SegmentationObject or SBD inst."""
        sample = self.samples[index]
        if sample.instances is not None and sample.instances.suffix == ".mat":
            return io.read_sbd_mat(sample.instances, "GTinst").astype(np.int64), self.read_label(sample).numpy()
        return super().read_instances(index)


def read_classes_txt(path: Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...] | None]:
    """Return the class names of a `classes.txt` (one per line, `name` or `name R G B`) and colours."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing: list one class per line (index 0 first), "
                           "optionally followed by its label colour as `R G B`")
    names, colours = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts[1:]):
            colours.append(tuple(int(p) for p in parts[1:]))
        elif len(parts) != 1:
            raise DatasetError(f"{path}:{number}: expected `name` or `name R G B` (0-255), got {line!r}")
        names.append(parts[0])
    if colours and len(colours) != len(names):
        raise DatasetError(f"{path}: give a colour on every line or on none")
    if not 1 <= len(names) <= 255:
        raise DatasetError(f"{path}: {len(names)} classes; 1 to 255 are supported (labels are 8-bit)")
    return tuple(names), tuple(colours) if colours else None


@DATASETS.register("folder", aliases=("custom",))
class Folder(VocLayout):
    """A user's set in the VOC layout, classes from `<root>/classes.txt`; images .jpg or .png.

    With colours in classes.txt, RGB label PNGs are mapped to classes by colour; without, labels must
    be palette or greyscale index PNGs.
    """

    image_format = ("JPEG", "PNG")
    image_suffixes = (".jpg", ".jpeg", ".png")
    splits = ("train", "val", "trainval", "test")

    def __init__(self, root: Path | str, split: str = "train", *, skip_bad: bool = False) -> None:
        names, colours = read_classes_txt(Path(root) / "classes.txt")
        self.info = DatasetInfo(f"folder:{Path(root).name}", names, colours or voc_palette(len(names)))
        self.colormap = {c: i for i, c in enumerate(colours)} if colours else None
        super().__init__(root, split, skip_bad=skip_bad)

    def locate(self, root: Path) -> Path:
        """Return the data root itself, which must hold the VOC-layout folders."""
        if not (root / "JPEGImages").is_dir():
            raise DatasetError(f"{root} has no JPEGImages/: a folder dataset needs JPEGImages/, "
                               "SegmentationClass/, ImageSets/Segmentation/<split>.txt and classes.txt")
        return root

    def read_label(self, sample: Sample) -> torch.Tensor:
        """Return the label of `sample`, mapping RGB colours when classes.txt gives them."""
        indices = io.read_index_png(sample.label, self.label_format, colormap=self.colormap)
        return self.validate_label(indices, sample.label)


def convert_sbd(root: Path, *, overwrite: bool = False) -> tuple[int, int]:
    """Write SBD's cls/*.mat and inst/*.mat as palette PNGs in cls_png/ and inst_png/; return (written, kept)."""
    sbd = find_sbd(Path(root))
    written = kept = 0
    palette = VOC_INFO.palette_bytes()
    for sub, key in (("cls", "GTcls"), ("inst", "GTinst")):
        out_dir = sbd / f"{sub}_png"
        out_dir.mkdir(exist_ok=True)
        for mat in sorted((sbd / sub).glob("*.mat")):
            out = out_dir / f"{mat.stem}.png"
            if out.exists() and not overwrite:
                kept += 1
                continue
            img = Image.fromarray(io.read_sbd_mat(mat, key))
            img.putpalette(palette)  # makes it a palette ("P") image
            tmp = out.with_suffix(".png.tmp")
            img.save(tmp, format="PNG")
            tmp.replace(out)
            written += 1
    return written, kept
