"""Models: the FE registry, the decoder meta-architecture and its decoders, and `build_model`."""

from __future__ import annotations

import seglab.models.fcn  # noqa: F401  (registers FCN first: registration order is listing order)
from seglab.models import deeplab, fcnw, linknet, lraspp  # noqa: F401  (register their decoders)
from seglab.models.backbones import BACKBONES, SEED_BASENETS, Backbone, Tap, build_backbone
from seglab.models.meta import Decoder, SegmentationModel
from seglab.models.registry import DECODERS
from seglab.models.weights import load_pretrained


def build_model(
    basenet: str,
    decoder: str,
    num_classes: int,
    output_stride: int = 32,
    pretrained: str | None = None,
    **decoder_options,
) -> SegmentationModel:
    """Return an FE x decoder network mapping normalized (N,3,H,W) images to (N,num_classes,H,W) logits.

    `pretrained` loads ImageNet weights into the FE (see `seglab.models.weights.resolve_pretrained`).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    backbone = build_backbone(basenet, output_stride)
    if pretrained:
        load_pretrained(backbone, pretrained)
    head = DECODERS[decoder](backbone, num_classes, **decoder_options)
    return SegmentationModel(backbone, head)


__all__ = [
    "BACKBONES",
    "DECODERS",
    "SEED_BASENETS",
    "Backbone",
    "Decoder",
    "SegmentationModel",
    "Tap",
    "build_backbone",
    "build_model",
    "load_pretrained",
]
