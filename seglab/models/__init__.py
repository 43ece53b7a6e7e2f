"""Models: the basenet registry, the decoder meta-architecture and its decoders, and `build_model`."""

from __future__ import annotations

import inspect

import seglab.models.fcn  # noqa: F401  (registers FCN first: registration order is listing order)
from seglab.config import SEED_BASENETS
from seglab.errors import ConfigError
from seglab.models import deeplab, fcnw, fpn, linknet, lraspp, pspnet, segformer, unet, upernet  # noqa: F401  (register their decoders)  # noqa: F401  (register their decoders)
from seglab.models.basenets import BASENETS, Basenet, BasenetSpec, Tap, Top1, basenet_spec, build_basenet
from seglab.models.meta import AuxHead, Decoder, SegmentationModel
from seglab.models.registry import DECODERS
from seglab.models.weights import load_pretrained


def build_decoder(name: str, basenet: Basenet, num_classes: int, **options) -> Decoder:
    """Return decoder `name` over `basenet`'s taps; an option the decoder does not take is an error naming it."""
    factory = DECODERS[name]
    try:
        inspect.signature(factory).bind(basenet, num_classes, **options)
    except TypeError as err:
        accepted = [p for p in inspect.signature(factory).parameters if p not in ("basenet", "num_classes")]
        raise ConfigError(
            f"--decoder-options for {name!r}: {err}; it takes {', '.join(accepted) or 'no options'}"
        ) from None
    return factory(basenet, num_classes, **options)


def build_model(
    basenet: str,
    decoder: str,
    num_classes: int,
    output_stride: int = 32,
    pretrained: str | None = None,
    aux: bool = False,
    **decoder_options,
) -> SegmentationModel:
    """Return a basenet x decoder network mapping normalized (N,3,H,W) images to (N,num_classes,H,W) logits.

    `pretrained` loads ImageNet weights into the basenet (see `seglab.models.weights.resolve_pretrained`);
    `aux` adds the auxiliary FCN head on the stride-16 tap (training only: see `SegmentationModel`).
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be positive, got {num_classes}")
    net = build_basenet(basenet, output_stride)
    if pretrained:
        load_pretrained(net, pretrained)
    head = build_decoder(decoder, net, num_classes, **decoder_options)
    return SegmentationModel(net, head, AuxHead(net, num_classes) if aux else None)


__all__ = [
    "BASENETS",
    "DECODERS",
    "SEED_BASENETS",
    "AuxHead",
    "Basenet",
    "BasenetSpec",
    "Decoder",
    "SegmentationModel",
    "Tap",
    "Top1",
    "basenet_spec",
    "build_basenet",
    "build_decoder",
    "build_model",
    "load_pretrained",
]
