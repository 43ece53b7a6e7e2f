"""PASCAL VOC 2012, VOC + SBD (`train_aug`), and users' own sets in the VOC layout (`folder`).

VOC 2012: Everingham et al., "The PASCAL Visual Object Classes Challenge", IJCV 2010.
SBD: Hariharan et al., "Semantic Contours from Inverse Detectors", ICCV 2011. Its labels ship as
MATLAB files (`cls/<id>.mat`, struct `GTcls.Segmentation`; instances in `inst/<id>.mat`, `GTinst`);
`convert_sbd` (`seglab data convert`) rewrites them once as palette PNGs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from seglab.data import io
from seglab.data.base import (
    DATASETS,
    FileDataset,
    Finding,
    Sample,
    label_lut,
    locate,
    read_split_list,
    voc_palette,
)
from seglab.errors import BadSampleError, DatasetError

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC_LAYOUT = ("JPEGImages", "SegmentationClass", "SegmentationObject", "ImageSets/Segmentation")


def identity_lut(num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Return the label map of files that store class ids directly (plus the ignore index)."""
    return label_lut({**{c: c for c in range(num_classes)}, ignore_index: ignore_index})


def list_ids(list_file: Path, make: Callable[[str, str], Sample]) -> tuple[list[Sample], list[Finding]]:
    """Return the samples of a split list (`make(id, "file:line")`) and a finding per unsafe entry.

    An entry is a sample id, not a path: an absolute entry or one with `/`, `\\` or `..` is refused
    here (as `path_outside_root`, which stops a strict build), whatever it would resolve to.
    """
    samples, findings = [], []
    for entry, source in read_split_list(list_file):
        if "/" in entry or "\\" in entry or ".." in entry:
            findings.append(
                Finding(
                    "path_outside_root",
                    str(list_file),
                    f"{source}: entry {entry!r} is not a plain sample id (it has '/', '\\' "
                    "or '..'); ids name files inside the dataset root",
                    details={"list": source, "entry": entry},
                )
            )
        else:
            samples.append(make(entry, source))
    return samples, findings


def read_sbd_mat(path: Path, key: str = "GTcls") -> np.ndarray:
    """Return the `Segmentation` array of an SBD .mat file (`GTcls`: classes, `GTinst`: instances)."""
    if not path.is_file():
        raise BadSampleError(path, "label file is missing", kind="label_missing")
    try:
        seg = loadmat(str(path))[key]["Segmentation"][0][0]
    except Exception as err:  # scipy raises many types for a damaged file; each is reported, none hidden
        raise BadSampleError(
            path, f"SBD .mat file cannot be read ({type(err).__name__}: {err})", kind="label_unreadable"
        ) from err
    if seg.ndim != 2 or seg.size == 0 or seg.max(initial=0) > 255:
        raise BadSampleError(
            path, f"SBD {key}.Segmentation is {seg.dtype} {seg.shape}; expected 8-bit 2-D ids", kind="label_unreadable"
        )
    return np.ascontiguousarray(seg, dtype=np.uint8)


class VocLayout(FileDataset):
    """A set in the VOC layout: JPEGImages/, SegmentationClass/ (index PNGs), SegmentationObject/
    (instance PNGs, optional), ImageSets/Segmentation/<split>.txt (one id per line)."""

    name = "voc"
    classes = VOC_CLASSES
    palette = voc_palette(len(VOC_CLASSES))
    ignore_index = 255
    has_instances = True
    label_map = identity_lut(len(VOC_CLASSES))
    image_suffixes: tuple[str, ...] = (".jpg",)

    def __init__(self, root: Path | str | None, split: str = "train", *, strict: bool = True) -> None:
        self.base = self.locate_base(root)
        list_file = self.base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            splits = sorted(p.stem for p in list_file.parent.glob("*.txt"))
            raise DatasetError(
                f"{self.name}: no split {split!r} ({list_file} is missing); splits here: {', '.join(splits) or 'none'}"
            )
        samples, findings = list_ids(list_file, self.voc_sample)
        super().__init__(Path(root), split, samples, strict=strict, findings=findings)

    def locate_base(self, root: Path | str | None) -> Path:
        """Return the folder holding JPEGImages/ etc.: root/VOCdevkit/VOC2012, root/VOC2012 or root."""
        return locate(root, self.name, ("VOCdevkit/VOC2012", "VOC2012", ""), "ImageSets/Segmentation")

    def voc_sample(self, sample_id: str, source: str) -> Sample:
        """Return the files of `sample_id` in this layout (the first image suffix that exists)."""
        images = [self.base / "JPEGImages" / f"{sample_id}{s}" for s in self.image_suffixes]
        image = next((p for p in images if p.is_file()), images[0])
        return Sample(
            sample_id,
            image,
            self.base / "SegmentationClass" / f"{sample_id}.png",
            self.base / "SegmentationObject" / f"{sample_id}.png",
            source,
        )

    def read_instances(self, sample: Sample) -> np.ndarray:
        """Return SegmentationObject ids as int32 [H,W]; its 255 (object boundaries) becomes 0."""
        ids = io.read_instance_png(sample.instances)
        ids[ids == self.ignore_index] = 0
        return ids


@DATASETS.register("voc", aliases=("pascal_voc", "voc2012"))
class VOC(VocLayout):
    """PASCAL VOC 2012 segmentation: train 1,464 / val 1,449 images, 21 classes, 255 ignore."""


@DATASETS.register("voc_aug", aliases=("pascal_voc_aug",))
class VOCAug(VocLayout):
    """VOC 2012 + SBD: train_aug 10,582 images (SBD train+val + VOC train - VOC val), VOC val 1,449.

    Splits: `train_aug`, `val` (VOC val), `seed_val` (VOC val - SBD train, 904 images: the seed
    project's val), and VOC's own (`train`, `trainval`).

    A sample's label is VOC's PNG where VOC annotates the image (finer, with boundary ignore), else
    SBD's: the PNG in `<sbd>/cls_png/` that `seglab data convert` writes, or else the .mat file.
    """

    name = "voc_aug"

    def __init__(self, root: Path | str | None, split: str = "train_aug", *, strict: bool = True) -> None:
        self.sbd = locate(root, self.name, ("benchmark_RELEASE/dataset", "SBD/dataset", "dataset"), "cls")
        if split not in ("train_aug", "seed_val"):
            super().__init__(root, split, strict=strict)
            return
        self.base = self.locate_base(root)
        voc_lists = self.base / "ImageSets" / "Segmentation"
        lists, findings = {}, []
        for key, list_file in (
            ("voc_train", voc_lists / "train.txt"),
            ("voc_val", voc_lists / "val.txt"),
            ("sbd_train", self.sbd / "train.txt"),
            ("sbd_val", self.sbd / "val.txt"),
        ):
            samples, bad = list_ids(list_file, self.voc_sample)
            lists[key] = {s.id: s for s in samples}
            findings += bad
        if split == "seed_val":
            chosen = [s for i, s in lists["voc_val"].items() if i not in lists["sbd_train"]]
        else:
            merged = {**lists["sbd_train"], **lists["sbd_val"], **lists["voc_train"]}
            chosen = [merged[i] for i in sorted(set(merged) - set(lists["voc_val"]))]
            print(
                f"voc_aug train_aug: {len(chosen)} images = SBD train {len(lists['sbd_train'])} + SBD val "
                f"{len(lists['sbd_val'])} + VOC train {len(lists['voc_train'])}, each id once, "
                f"minus VOC val {len(lists['voc_val'])}"
            )
        FileDataset.__init__(self, Path(root), split, chosen, strict=strict, findings=findings)
        mats = sum(s.label.suffix == ".mat" for s in self.samples)
        if mats:
            print(
                f"voc_aug: {mats} labels are read from SBD .mat files; `seglab data convert --dataset voc_aug "
                f"--data-root {root}` writes them once as PNGs, which load faster"
            )

    def voc_sample(self, sample_id: str, source: str) -> Sample:
        """Return VOC's files for `sample_id` where VOC has them, else SBD's."""
        voc = super().voc_sample(sample_id, source)
        if voc.label.is_file():
            return voc
        image = voc.image if voc.image.is_file() else self.sbd / "img" / f"{sample_id}.jpg"
        label, instances = (self._sbd_file(sample_id, kind) for kind in ("cls", "inst"))
        return Sample(sample_id, image, label, instances, source)

    def _sbd_file(self, sample_id: str, kind: str) -> Path:
        png = self.sbd / f"{kind}_png" / f"{sample_id}.png"
        return png if png.is_file() else self.sbd / kind / f"{sample_id}.mat"

    def read_raw_label(self, sample: Sample) -> np.ndarray:
        """Return the raw label from VOC's or the converted PNG, or from SBD's .mat file."""
        if sample.label.suffix == ".mat":
            return read_sbd_mat(sample.label, "GTcls")
        return super().read_raw_label(sample)

    def read_instances(self, sample: Sample) -> np.ndarray:
        """Return instance ids from VOC's SegmentationObject or SBD's inst (PNG or .mat)."""
        if sample.instances.suffix == ".mat":
            return read_sbd_mat(sample.instances, "GTinst").astype(np.int32)
        return super().read_instances(sample)


def read_classes_txt(path: Path) -> tuple[tuple[str, ...], np.ndarray | None]:
    """Return the class names in `classes.txt` (one per line, `name` or `name R G B`) and their colours.

    A name or a colour given twice is an error naming both lines: a duplicate name would merge two classes
    in every per-class result, a duplicate colour would make one of the classes impossible to label.
    """
    if not path.is_file():
        raise DatasetError(
            f"{path} is missing: a folder dataset lists its classes there, one per line in "
            "index order (background first), each optionally followed by its colour `R G B`"
        )
    names, colours = [], []
    name_lines: dict[str, int] = {}
    colour_lines: dict[tuple[int, ...], tuple[int, str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts[1:]):
            colour = tuple(int(p) for p in parts[1:])
            if colour in colour_lines:
                first, other = colour_lines[colour]
                raise DatasetError(
                    f"{path}:{number}: class {parts[0]!r} has the colour {' '.join(parts[1:])} of class {other!r} "
                    f"on line {first}: a label pixel of that colour could not tell them apart; give each class "
                    "its own colour"
                )
            colour_lines[colour] = (number, parts[0])
            colours.append(list(colour))
        elif len(parts) != 1:
            raise DatasetError(f"{path}:{number}: expected `name` or `name R G B` (0-255), got {line!r}")
        if parts[0] in name_lines:
            raise DatasetError(
                f"{path}:{number}: class name {parts[0]!r} is also on line {name_lines[parts[0]]}: per-class "
                "results are keyed by name, so one class would vanish from them; give each class its own name"
            )
        name_lines[parts[0]] = number
        names.append(parts[0])
    if colours and len(colours) != len(names):
        raise DatasetError(f"{path}: give a colour on every line or on none")
    if not 1 <= len(names) <= 255:
        raise DatasetError(f"{path}: {len(names)} classes; seglab supports 1 to 255 (labels are 8-bit)")
    return tuple(names), np.array(colours, dtype=np.uint8) if colours else None


@DATASETS.register("folder", aliases=("custom",))
class Folder(VocLayout):
    """Your own set in the VOC layout under --data-root, classes from `<root>/classes.txt`.

    Images may be .jpg or .png. Labels are index PNGs; with colours in classes.txt, RGB label PNGs
    are read by colour instead. SegmentationObject/ (instance PNGs) is optional.
    """

    image_formats = ("JPEG", "PNG")
    image_suffixes = (".jpg", ".jpeg", ".png")

    def __init__(self, root: Path | str | None, split: str = "train", *, strict: bool = True) -> None:
        if root is None:
            raise DatasetError("dataset 'folder' needs --data-root")
        self.classes, self.colormap = read_classes_txt(Path(root) / "classes.txt")
        self.name = f"folder:{Path(root).resolve().name}"
        self.palette = self.colormap if self.colormap is not None else voc_palette(len(self.classes))
        self.label_map = identity_lut(len(self.classes))
        self.has_instances = (Path(root) / "SegmentationObject").is_dir()
        super().__init__(root, split, strict=strict)

    def locate_base(self, root: Path | str | None) -> Path:
        """Return the data root itself: it must hold ImageSets/Segmentation/ and the other folders."""
        return locate(root, self.name, ("",), "ImageSets/Segmentation")

    def read_raw_label(self, sample: Sample) -> np.ndarray:
        """Return the label as indices; RGB labels are mapped by the classes.txt colours when given."""
        return io.read_label_png(sample.label, colormap=self.colormap)


def convert_sbd(root: Path | str, *, overwrite: bool = False) -> dict:
    """Write SBD's cls/*.mat and inst/*.mat once as palette PNGs in cls_png/ and inst_png/.

    Returns counts (written, kept: already there, failed) and `failures`, the message of each file that
    could not be read. Each PNG is written atomically, so an interrupted conversion leaves no partial PNG.
    """
    sbd = locate(root, "voc_aug", ("benchmark_RELEASE/dataset", "SBD/dataset", "dataset"), "cls")
    palette = voc_palette(256)
    counts: dict = {"written": 0, "kept": 0, "failed": 0, "failures": []}
    for kind, key in (("cls", "GTcls"), ("inst", "GTinst")):
        out_dir = sbd / f"{kind}_png"
        out_dir.mkdir(exist_ok=True)
        for mat in sorted((sbd / kind).glob("*.mat")):
            out = out_dir / f"{mat.stem}.png"
            if out.exists() and not overwrite:
                counts["kept"] += 1
                continue
            try:
                array = read_sbd_mat(mat, key)
            except BadSampleError as err:
                counts["failures"].append(str(err))
                counts["failed"] += 1
                continue
            io.write_label_png(array, palette, out)
            counts["written"] += 1
    return counts
