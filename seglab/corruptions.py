"""Robustness under image corruptions: the 15 ImageNet-C corruptions as a dataset wrapper, and the summary
`seglab test --corruptions` writes.

The corruptions and their five severities are those of Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations" (ICLR 2019), as implemented by the `imagecorruptions`
package (Michaelis et al. 2019; seglab uses the maintained fork `imagecorruptions-imaug`, which works with
numpy 2, installed by `pip install 'seglab[robustness]'`). `CorruptedDataset` applies one corruption at one
severity to every image of a dataset and leaves the labels alone, so the evaluation loop runs unchanged.
Each corrupted image is a pure function of (corruption, severity, sample id): the package draws from
numpy's global generator (and numba's, for glass blur), which is seeded from that key for each image and
restored afterwards, so any worker, order or `--limit` gives the same pixels.

The summary follows Kamann & Rother, "Benchmarking the Robustness of Semantic Segmentation Models" (CVPR
2020): mIoU per corruption and severity, the mean mIoU under corruption (over every corruption and severity
evaluated), and the relative robustness, corrupted mIoU / clean mIoU, overall, per corruption and per
severity.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from seglab.config import CORRUPTIONS, SEVERITIES
from seglab.errors import ConfigError, DatasetError
from seglab.plugins import optional_import

MIN_SIDE = 32
"""The smallest image side the `imagecorruptions` definitions accept."""
SEEDED_BY_ARGUMENT = ("impulse_noise", "glass_blur")
"""Corruptions that take their seed as an argument (scikit-image's and numba's generators)."""


def corruption_names(names: Sequence[str]) -> list[str]:
    """Return the corruptions `--corruptions` names ("all" is every one), in the benchmark's order."""
    chosen = set(CORRUPTIONS) if "all" in names else set(names)
    unknown = sorted(chosen - set(CORRUPTIONS))
    if unknown:
        choices = ", ".join(CORRUPTIONS)
        raise ConfigError(f"--corruptions: unknown corruption {unknown[0]!r}; choose from all, {choices}")
    return [name for name in CORRUPTIONS if name in chosen]


def image_seed(name: str, severity: int, sample_id: str) -> int:
    """Return the 32-bit seed of one corrupted image: a function of (corruption, severity, sample id) only."""
    key = [zlib.crc32(name.encode()), severity, zlib.crc32(sample_id.encode())]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def corrupt(image: Tensor, name: str, severity: int, sample_id: str) -> Tensor:
    """Return uint8 image [3, H, W] under corruption `name` at `severity` (1-5), the same for the same key."""
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ConfigError(f"corruption severity must be one of 1-5, got {severity}")
    height, width = image.shape[-2:]
    if min(height, width) < MIN_SIDE:
        raise DatasetError(
            f"{sample_id}: {height}x{width} is smaller than the {MIN_SIDE}x{MIN_SIDE} pixels the ImageNet-C "
            "corruptions need; evaluate robustness on larger images"
        )
    package = optional_import("imagecorruptions", "robustness", "--corruptions")
    seed = image_seed(name, severity, sample_id)
    kwargs = {"seed": seed} if name in SEEDED_BY_ARGUMENT else {}
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        out = package.corrupt(image.permute(1, 2, 0).numpy(), severity=severity, corruption_name=name, **kwargs)
    finally:
        np.random.set_state(state)
    return torch.from_numpy(np.array(out, dtype=np.uint8)).permute(2, 0, 1).contiguous()  # a writable copy


class CorruptedDataset:
    """A SegmentationDataset seen through one corruption at one severity: images corrupted, labels unchanged.

    Every other attribute (classes, palette, ignore index, instances, sample ids) is the wrapped dataset's.
    """

    def __init__(self, dataset, name: str, severity: int) -> None:
        if severity not in SEVERITIES:
            raise ConfigError(f"corruption severity must be one of 1-5, got {severity}")
        # an unknown name fails here, before any image is read
        self.dataset, self.name, self.severity = dataset, corruption_names([name])[0], severity

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, attribute: str):
        if attribute == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(attribute)
        return getattr(self.dataset, attribute)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.load(index)

    def load(self, index: int) -> tuple[Tensor, Tensor]:
        """Return (corrupted image uint8 [3, H, W], label uint8 [H, W])."""
        image, label = self.dataset.load(index)
        return corrupt(image, self.name, self.severity, self.dataset.sample_id(index)), label


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _ratio(value: float | None, clean: float | None) -> float | None:
    return None if value is None or not clean else value / clean


def robustness_summary(clean_miou: float | None, results: list[dict]) -> dict:
    """Return the `corruptions` entry of metrics.json from per-(corruption, severity) results.

    `results` holds one dict per evaluation: corruption, severity, miou, miou_ci, per_class_iou. Means are over
    the evaluations given (every corruption at every severity evaluated); relative robustness is mean
    corrupted mIoU / clean mIoU (Kamann & Rother 2020).
    """
    names = list(dict.fromkeys(r["corruption"] for r in results))
    severities = sorted({r["severity"] for r in results})
    mean = _mean([r["miou"] for r in results])
    per_corruption = []
    for name in names:
        value = _mean([r["miou"] for r in results if r["corruption"] == name])
        per_corruption.append({"corruption": name, "mean_miou": value, "relative": _ratio(value, clean_miou)})
    per_severity = []
    for severity in severities:
        value = _mean([r["miou"] for r in results if r["severity"] == severity])
        per_severity.append({"severity": severity, "mean_miou": value, "relative": _ratio(value, clean_miou)})
    return {
        "protocol": "ImageNet-C corruptions (imagecorruptions); relative robustness = corrupted / clean mIoU",
        "clean_miou": clean_miou,
        "mean_miou": mean,
        "relative_robustness": _ratio(mean, clean_miou),
        "severities": severities,
        "per_corruption": per_corruption,
        "per_severity": per_severity,
        "results": results,
    }
