"""Default augmentation recipes per dataset, as data (the mechanisms are in `transforms`).

Crops follow common practice for each dataset (e.g. DeepLab, mmsegmentation): 512x512 for VOC and
ADE20K, 512x1024 for Cityscapes' 2:1 frames; scale 0.5-2.0 and flips everywhere.
"""

from __future__ import annotations

from seglab.data.transforms import Augment

PRESETS: dict[str, Augment] = {
    "voc": Augment(crop=(512, 512)),
    "voc_aug": Augment(crop=(512, 512)),
    "folder": Augment(crop=(512, 512)),
    "ade20k": Augment(crop=(512, 512)),
    "cityscapes": Augment(crop=(512, 1024)),
    "synthetic": Augment(crop=(128, 128)),
}


def augment_preset(dataset: str) -> Augment:
    """Return the default augmentation of `dataset` (the VOC recipe for datasets not listed)."""
    return PRESETS.get(dataset.split(":")[0], PRESETS["voc"])
