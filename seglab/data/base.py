"""The dataset contract: `SegmentationDataset`, its errors and findings, and the dataset registry.

A dataset yields (image uint8 [3,H,W], label uint8 [H,W]) pairs with class names, a palette and an
ignore index. File-backed datasets are a list of `Sample`s (paths) built from the dataset's own
split lists; every path must resolve, symlinks followed, inside the dataset root (reliability rule 8).
A bad file is never replaced by something else: `load` raises `BadSampleError` naming it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from seglab.data import io
from seglab.errors import BadSampleError, ConfigError, DatasetError
from seglab.registry import Registry

DATASETS: Registry[type[SegmentationDataset]] = Registry("dataset")


@dataclass(frozen=True)
class Finding:
    """One fault found in a dataset: a stable `kind`, the file, a readable message and details."""

    kind: str
    path: str
    message: str
    severity: str = "error"
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Return the finding as a JSON-ready dict."""
        return {
            "kind": self.kind,
            "severity": self.severity,
            "path": self.path,
            "message": self.message,
            "details": self.details,
        }

    @classmethod
    def from_error(cls, err: BadSampleError) -> Finding:
        """Return the finding that a `BadSampleError` describes."""
        return cls(err.kind, err.path, str(err), details=dict(err.details))


@dataclass(frozen=True)
class Sample:
    """One sample's files; `id` names it in messages; `source` is the list file and line it came from."""

    id: str
    image: Path
    label: Path | None
    instances: Path | None = None
    source: str = ""


def voc_palette(n: int) -> np.ndarray:
    """Return the PASCAL VOC colour map (bit-interleaved class ids) for `n` classes as uint8 [n, 3]."""
    ids = np.arange(n)
    palette = np.zeros((n, 3), dtype=np.int64)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= ((ids >> (3 * bit + channel)) & 1) << (7 - bit)
    return palette.astype(np.uint8)


def resolve_inside(root: Path, path: Path) -> Path:
    """Return `path` resolved (symlinks followed); raise ValueError if it is not inside `root`."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ValueError(f"resolves to {resolved}, outside the dataset root {root.resolve()}")
    return resolved


def read_split_list(list_file: Path) -> list[tuple[str, str]]:
    """Return (entry, "file:line") for each non-empty line of a split list (first token of the line)."""
    if not list_file.is_file():
        raise DatasetError(f"split list {list_file} not found")
    entries = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        tokens = line.split()
        if tokens:
            entries.append((tokens[0], f"{list_file}:{number}"))
    return entries


def locate(root: Path | str | None, dataset: str, candidates: Iterable[str], marker: str) -> Path:
    """Return the first of `root/candidate` holding `marker`; else a DatasetError saying what was expected."""
    if root is None:
        raise DatasetError(f"dataset {dataset!r} needs --data-root")
    root = Path(root)
    tried = []
    for candidate in candidates:
        base = root / candidate if candidate else root
        tried.append(str(base / marker))
        if (base / marker).exists():
            return base
    raise DatasetError(f"{dataset}: none of {', '.join(tried)} exists; see the README for the expected layout")


def label_lut(valid: dict[int, int]) -> np.ndarray:
    """Return a 256-entry int16 lookup table from raw label value to class id (-1: not a valid value)."""
    lut = np.full(256, -1, dtype=np.int16)
    for raw, target in valid.items():
        lut[raw] = target
    return lut


class SegmentationDataset(torch.utils.data.Dataset):
    """A segmentation dataset: `load(i)` -> (image uint8 [3,H,W], label uint8 [H,W]) plus class metadata."""

    name: str = ""
    classes: tuple[str, ...] = ()
    palette: np.ndarray
    ignore_index: int = 255
    has_instances: bool = False
    root: Path | None = None
    split: str = ""
    list_findings: list[Finding]

    @property
    def num_classes(self) -> int:
        """Return the number of classes (the ignore index is not one)."""
        return len(self.classes)

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.load(index)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (image uint8 [3,H,W], label uint8 [H,W]); raise BadSampleError naming a bad file."""
        raise NotImplementedError

    def load_instances(self, index: int) -> torch.Tensor | None:
        """Return instance ids int32 [H,W] (0: no instance), or None when the dataset has none."""
        return None

    def sample_id(self, index: int) -> str:
        """Return the id of sample `index` (file stem) for messages and galleries."""
        raise NotImplementedError

    def files(self, index: int) -> dict[str, Path]:
        """Return the files sample `index` reads, by role (image, label, instances)."""
        return {}

    def describe(self) -> str:
        """Return a one-line summary: name, split, sample and class counts, root."""
        where = f" ({self.root})" if self.root is not None else ""
        return f"{self.name} {self.split}: {len(self)} samples, {self.num_classes} classes{where}"


class FileDataset(SegmentationDataset):
    """A dataset of files on disk: `samples` plus how to decode them.

    Subclasses set the class metadata, `image_formats` (the only decoders tried) and `label_map`
    (raw label value -> class id, -1 for values that are faults), then call `__init__` with the
    samples they listed. With `strict=True` (the default) an entry that leaves the root stops the
    build naming the list file and line; with `strict=False` (used by `seglab data check`) it is
    kept out of `samples` and recorded in `list_findings`.
    """

    image_formats: tuple[str, ...] = ("JPEG",)
    label_map: np.ndarray = label_lut({})

    def __init__(
        self,
        root: Path,
        split: str,
        samples: Iterable[Sample],
        *,
        strict: bool = True,
        findings: Iterable[Finding] = (),
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.list_findings = list(findings)
        self.samples: list[Sample] = []
        for sample in samples:
            problem = self._outside_root(sample)
            if problem is None:
                self.samples.append(sample)
            else:
                self.list_findings.append(problem)
        unsafe = [f for f in self.list_findings if f.kind == "path_outside_root"]
        if strict and unsafe:
            listed = "\n".join(f"  {f.message}" for f in unsafe[:20])
            more = f"\n  ... and {len(unsafe) - 20} more" if len(unsafe) > 20 else ""
            raise DatasetError(
                f"{self.name} {split}: {len(unsafe)} list entries leave the dataset root {self.root}:\n{listed}{more}"
            )
        identity = np.arange(256)
        self._label_is_identity = bool(np.all((self.label_map == identity) | (self.label_map < 0)))
        self._label_map_u8 = np.where(self.label_map < 0, 0, self.label_map).astype(np.uint8)

    def _outside_root(self, sample: Sample) -> Finding | None:
        for path in (sample.image, sample.label, sample.instances):
            if path is None:
                continue
            try:
                resolve_inside(self.root, path)
            except ValueError as err:
                return Finding(
                    "path_outside_root",
                    str(path),
                    f"{sample.source}: entry {sample.id!r} {err}",
                    details={"list": sample.source, "entry": sample.id},
                )
        return None

    def __len__(self) -> int:
        return len(self.samples)

    def sample_id(self, index: int) -> str:
        """Return the id of sample `index` as its split list names it."""
        return self.samples[index].id

    def files(self, index: int) -> dict[str, Path]:
        """Return the files sample `index` reads, by role."""
        sample = self.samples[index]
        roles = {"image": sample.image, "label": sample.label, "instances": sample.instances}
        return {role: path for role, path in roles.items() if path is not None}

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (image uint8 [3,H,W], label uint8 [H,W]); raise BadSampleError naming a bad file."""
        sample = self.samples[index]
        image = io.read_image(sample.image, self.image_formats)
        raw = self.read_raw_label(sample)
        if raw.shape != tuple(image.shape[1:]):
            raise BadSampleError(
                sample.label,
                f"label is {raw.shape[0]}x{raw.shape[1]} (HxW) but image "
                f"{sample.image.name} is {image.shape[1]}x{image.shape[2]}",
                kind="size_mismatch",
            )
        return image, self.map_label(raw, sample.label)

    def read_raw_label(self, sample: Sample) -> np.ndarray:
        """Return the label file's raw values as uint8 [H,W] (before `label_map`)."""
        return io.read_label_png(sample.label)

    def map_label(self, raw: np.ndarray, path: Path) -> torch.Tensor:
        """Return `raw` mapped to class ids; raise BadSampleError naming values that are not valid."""
        counts = torch.bincount(torch.from_numpy(raw).view(-1), minlength=256).numpy()
        bad = np.flatnonzero((counts > 0) & (self.label_map < 0))
        if bad.size:
            listed = ", ".join(f"{v} ({counts[v]} px)" for v in bad)
            raise BadSampleError(
                path,
                f"label values {listed} are neither a class (0..{self.num_classes - 1}) "
                f"nor the ignore index {self.ignore_index}",
                kind="label_values",
                details={"values": {int(v): int(counts[v]) for v in bad}},
            )
        mapped = raw if self._label_is_identity else self._label_map_u8[raw]
        return torch.from_numpy(np.ascontiguousarray(mapped))

    def load_instances(self, index: int) -> torch.Tensor | None:
        """Return instance ids int32 [H,W] (0: no instance), or None when the dataset has none."""
        if not self.has_instances:
            return None
        sample = self.samples[index]
        if sample.instances is None:
            raise BadSampleError(sample.label, "no instance mask for this sample", kind="instances_missing")
        return torch.from_numpy(self.read_instances(sample))

    def read_instances(self, sample: Sample) -> np.ndarray:
        """Return the instance mask of `sample` as int32 [H,W], 0 where there is no instance."""
        raise NotImplementedError


def build_dataset(name: str, root: str | Path | None, split: str, **options) -> SegmentationDataset:
    """Return dataset `name` (see `DATASETS.names()`) read from `root`, split `split`; an option the dataset
    does not take is an error naming it and the options it takes."""
    factory = DATASETS[name]
    try:
        inspect.signature(factory).bind(root, split, **options)
    except TypeError as err:
        accepted = [p for p in list(inspect.signature(factory).parameters)[2:] if p != "strict"]
        raise ConfigError(
            f"--dataset-options for {name!r}: {err}; it takes {', '.join(accepted) or 'no options'}"
        ) from None
    return factory(root, split, **options)
