"""Datasets, augmentation and input pipeline.

Datasets are registered by name (`DATASETS`) and built with `build_dataset(name, root, split)`:
voc, voc_aug (VOC + SBD), cityscapes, ade20k, folder (a VOC-layout set of your own) and synthetic
(embedded, generated on the fly). Each yields (image uint8 [3,H,W], label uint8 [H,W]).
"""

from seglab.data import ade20k, cityscapes, synthetic, voc  # noqa: F401  (register the datasets)
from seglab.data.base import (
    DATASETS,
    FileDataset,
    Finding,
    Sample,
    SegmentationDataset,
    build_dataset,
)
from seglab.data.check import CheckReport, check_dataset, drop_missing, quick_check
from seglab.data.loader import AugmentedDataset, Collate, worker_init
from seglab.data.presets import PRESETS, augment_preset
from seglab.data.stats import dataset_stats
from seglab.data.transforms import Augment, TrainTransform, mean_fill, normalize
from seglab.errors import BadSampleError, DatasetError

__all__ = [
    "DATASETS",
    "PRESETS",
    "Augment",
    "AugmentedDataset",
    "BadSampleError",
    "CheckReport",
    "Collate",
    "DatasetError",
    "FileDataset",
    "Finding",
    "Sample",
    "SegmentationDataset",
    "TrainTransform",
    "augment_preset",
    "build_dataset",
    "check_dataset",
    "dataset_stats",
    "drop_missing",
    "mean_fill",
    "normalize",
    "quick_check",
    "worker_init",
]
