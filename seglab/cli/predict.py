"""`seglab predict RUN IMAGE ...`: one flag per `PredictConfig` field."""

from __future__ import annotations

import argparse

from seglab.cli.flags import add_config_arguments, config_from_args
from seglab.config import PredictConfig
from seglab.predict import predict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `seglab predict` flags."""
    add_config_arguments(parser, PredictConfig)


def main(args: argparse.Namespace) -> int:
    """Segment the images; write label PNGs, overlays and (optionally) probabilities."""
    predict(config_from_args(PredictConfig, args))
    return 0
