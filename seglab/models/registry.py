"""The decoder registry: a new decoder is one file that registers a factory here.

A factory takes `(basenet, num_classes, **options)` and returns a `seglab.models.meta.Decoder`.
"""

from __future__ import annotations

from collections.abc import Callable

from seglab.models.meta import Decoder
from seglab.registry import Registry

DecoderFactory = Callable[..., Decoder]
DECODERS: Registry[DecoderFactory] = Registry("decoder")

__all__ = ["DECODERS", "DecoderFactory"]
