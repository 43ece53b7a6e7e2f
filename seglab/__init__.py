"""seglab: any pretrained feature extractor x any decoder, trained from one command, evaluated honestly."""

from seglab.models import build_model

__version__ = "0.1.0"

__all__ = ["__version__", "build_model"]
