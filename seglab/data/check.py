"""`seglab data check`: read every file of a dataset split and report each fault with its file.

Finds (reliability rules 6-8): list entries leaving the root, missing images or labels, empty,
unreadable, truncated or oversized images (decompression bombs included), image/label size mismatch,
label values that are neither a class nor the ignore index (with values and pixel counts), RGB colour
labels where indices are expected, missing, unreadable or mis-sized instance masks (which `seglab test`
reads for its object metrics), and, as a warning, labels holding only 0 and the ignore index (a 0/255
binary mask?).
`quick_check` is the cheap part (lists and file presence, no decoding) that training runs first.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from seglab.data import io
from seglab.data.base import FileDataset, Finding, SegmentationDataset
from seglab.errors import BadSampleError, DatasetError


@dataclass
class CheckReport:
    """What `check_dataset` found: `findings` plus how many samples were looked at."""

    dataset: str
    samples: int
    decoded: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        """Return the findings of severity "error"."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """Return the findings of severity "warning"."""
        return [f for f in self.findings if f.severity == "warning"]

    def counts(self) -> dict[str, int]:
        """Return the number of findings per kind."""
        return dict(sorted(Counter(f.kind for f in self.findings).items()))

    def as_dict(self) -> dict:
        """Return the report as a JSON-ready dict."""
        return {
            "dataset": self.dataset,
            "samples": self.samples,
            "decoded": self.decoded,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "counts": self.counts(),
            "findings": [f.as_dict() for f in self.findings],
        }

    def format(self) -> str:
        """Return the report as text: one line per finding, then the counts."""
        lines = [f"[{f.severity}] {f.kind}: {f.message}" for f in self.findings]
        counts = ", ".join(f"{kind} {n}" for kind, n in self.counts().items()) or "none"
        lines.append(
            f"{self.dataset}: {self.samples} samples, {self.decoded} decoded; "
            f"{len(self.errors)} errors, {len(self.warnings)} warnings ({counts})"
        )
        return "\n".join(lines)


def quick_check(dataset: SegmentationDataset) -> list[Finding]:
    """Return the dataset's list findings and a finding per missing image or label file (no decoding)."""
    findings = list(dataset.list_findings)
    if isinstance(dataset, FileDataset):
        for index in range(len(dataset)):
            for role, path in dataset.files(index).items():
                if role != "instances" and not path.is_file():
                    findings.append(
                        Finding(
                            f"{role}_missing", str(path), f"{path}: {role} of {dataset.sample_id(index)} is missing"
                        )
                    )
    return findings


def drop_missing(dataset: FileDataset, *, skip_bad: bool) -> list[Finding]:
    """Run `quick_check` before training: raise listing the faults, or with `skip_bad` drop the samples
    whose files are missing and return the findings, to be counted in the run log."""
    findings = quick_check(dataset)
    if findings and not skip_bad:
        listed = "\n".join(f"  {f.message}" for f in findings[:20])
        more = f"\n  ... and {len(findings) - 20} more" if len(findings) > 20 else ""
        raise DatasetError(
            f"{dataset.describe()}: {len(findings)} fault(s):\n{listed}{more}\n"
            "run `seglab data check` for a full report, or pass --skip-bad-samples to "
            "leave these samples out (they are counted in the run log)"
        )
    missing = {f.path for f in findings}
    dataset.samples = [s for s in dataset.samples if str(s.image) not in missing and str(s.label) not in missing]
    return findings


def load_label(dataset: SegmentationDataset, index: int) -> torch.Tensor:
    """Return the label of sample `index` as class ids, decoding only the label where possible."""
    if isinstance(dataset, FileDataset):
        sample = dataset.samples[index]
        return dataset.map_label(dataset.read_raw_label(sample), sample.label)
    return dataset.load(index)[1]


def check_sample(dataset: SegmentationDataset, index: int) -> list[Finding]:
    """Return every fault of sample `index`; image and label are decoded and checked separately."""
    if not isinstance(dataset, FileDataset):
        try:
            image, label = dataset.load(index)
        except BadSampleError as err:
            return [Finding.from_error(err)]
        return binary_mask_warning(label, dataset.sample_id(index), dataset.ignore_index)
    sample, findings, image, label = dataset.samples[index], [], None, None
    try:
        image = io.read_image(sample.image, dataset.image_formats)
    except BadSampleError as err:
        findings.append(Finding.from_error(err))
    try:
        label = load_label(dataset, index)
    except BadSampleError as err:
        findings.append(Finding.from_error(err))
    findings += instance_findings(dataset, index, image)
    if image is not None and label is not None:
        if tuple(label.shape) != tuple(image.shape[1:]):
            findings.append(
                Finding(
                    "size_mismatch",
                    str(sample.label),
                    f"{sample.label}: label is {label.shape[0]}x{label.shape[1]} (HxW) but image "
                    f"{sample.image.name} is {image.shape[1]}x{image.shape[2]}",
                )
            )
        findings += binary_mask_warning(label, str(sample.label), dataset.ignore_index)
    return findings


def instance_findings(dataset: FileDataset, index: int, image: torch.Tensor | None) -> list[Finding]:
    """Return the faults of sample `index`'s instance mask (where the dataset has instance masks): missing,
    unreadable, or not the size of its image."""
    if not dataset.has_instances:
        return []
    sample = dataset.samples[index]
    try:
        instances = dataset.load_instances(index)
    except BadSampleError as err:
        return [Finding.from_error(err)]
    if image is not None and tuple(instances.shape) != tuple(image.shape[1:]):
        return [
            Finding(
                "instances_size_mismatch",
                str(sample.instances),
                f"{sample.instances}: instance mask is {instances.shape[0]}x{instances.shape[1]} (HxW) but image "
                f"{sample.image.name} is {image.shape[1]}x{image.shape[2]}",
            )
        ]
    return []


def binary_mask_warning(label: torch.Tensor, name: str, ignore_index: int) -> list[Finding]:
    """Return a warning when a label holds only 0 and the ignore index: a 0/255 binary mask whose
    foreground would be ignored rather than learned."""
    values = set(torch.unique(label).tolist())
    if values != {0, ignore_index}:
        return []
    share = float((label == ignore_index).float().mean())
    return [
        Finding(
            "binary_mask",
            name,
            f"{name}: label holds only 0 and the ignore index {ignore_index} "
            f"({share:.0%} of pixels): a 0/{ignore_index} binary mask? Its foreground would be "
            "ignored; store class indices (0/1) instead",
            severity="warning",
            details={"values": sorted(values), "ignored_share": round(share, 4)},
        )
    ]


_WORKER_DATASET: SegmentationDataset | None = None


def _init_worker(dataset: SegmentationDataset) -> None:
    global _WORKER_DATASET
    _WORKER_DATASET = dataset
    torch.set_num_threads(1)


def _check_chunk(indices: Sequence[int]) -> list[Finding]:
    return [f for i in indices for f in check_sample(_WORKER_DATASET, i)]


def check_dataset(dataset: SegmentationDataset, *, quick: bool = False, workers: int | None = None) -> CheckReport:
    """Return the CheckReport of `dataset`: list and file-presence faults, then (unless `quick`)
    every sample decoded and checked, in `workers` processes (default: all cores, at most 8)."""
    findings = quick_check(dataset)
    report = CheckReport(dataset.describe(), len(dataset), 0, findings)
    if quick:
        return report
    missing = {f.path for f in findings}
    indices = [i for i in range(len(dataset)) if not missing.intersection(map(str, _files(dataset, i)))]
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    chunks = [indices[i : i + 64] for i in range(0, len(indices), 64)]
    progress = tqdm(total=len(indices), desc="check", unit="sample", disable=not sys.stderr.isatty())
    results = []
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            results.append([f for i in chunk for f in check_sample(dataset, i)])
            progress.update(len(chunk))
    else:  # the dataset is sent once per worker process, then only index chunks
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(dataset,)) as pool:
            for chunk, found in zip(chunks, pool.map(_check_chunk, chunks), strict=True):
                results.append(found)
                progress.update(len(chunk))
    progress.close()
    report.findings += [f for chunk in results for f in chunk]
    report.decoded = len(indices)
    return report


def _files(dataset: SegmentationDataset, index: int) -> list:
    return [p for role, p in dataset.files(index).items() if role != "instances"]
