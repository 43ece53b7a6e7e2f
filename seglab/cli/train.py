"""`seglab train`: `--config FILE` and one flag per `TrainConfig` field."""

from __future__ import annotations

import argparse

from seglab.cli.flags import add_config_arguments, config_from_args, explicit_values
from seglab.config import TrainConfig
from seglab.engine.train import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `seglab train` flags."""
    add_config_arguments(parser, TrainConfig)


def main(args: argparse.Namespace) -> int:
    """Train (or resume, with --resume) a run; exit 128 + N when stopped by signal N."""
    return train(config_from_args(TrainConfig, args), explicit_values(TrainConfig, args))
