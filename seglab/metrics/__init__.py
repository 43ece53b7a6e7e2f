"""Segmentation metrics: confusion matrices and what derives from them, bootstrap intervals over
images, per-object-size recall and iIoU, and Boundary IoU. See the modules for the papers followed."""

from seglab.metrics.bootstrap import DEFAULT_RESAMPLES, bootstrap_miou, paired_bootstrap, pooled_miou
from seglab.metrics.boundary import DEFAULT_DILATION_RATIO, band_width, boundary_band, boundary_stats
from seglab.metrics.confusion import (
    OutOfRangeError,
    class_counts,
    class_iou,
    confusion_matrix,
    counts_iou,
    divide,
    mean_iou,
    nanmean,
    per_image_confusion,
    segmentation_metrics,
    top_confusions,
)
from seglab.metrics.instances import COCO_AREA_BINS, instance_records, size_metrics

__all__ = [
    "COCO_AREA_BINS",
    "DEFAULT_DILATION_RATIO",
    "DEFAULT_RESAMPLES",
    "OutOfRangeError",
    "band_width",
    "bootstrap_miou",
    "boundary_band",
    "boundary_stats",
    "class_counts",
    "class_iou",
    "confusion_matrix",
    "counts_iou",
    "divide",
    "instance_records",
    "mean_iou",
    "nanmean",
    "paired_bootstrap",
    "per_image_confusion",
    "pooled_miou",
    "segmentation_metrics",
    "size_metrics",
    "top_confusions",
]
