"""`seglab test RUN`: one flag per `TestConfig` field."""

from __future__ import annotations

import argparse

from seglab.cli.flags import add_config_arguments, config_from_args
from seglab.config import TestConfig
from seglab.evaluation import test


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `seglab test` flags."""
    add_config_arguments(parser, TestConfig)


def main(args: argparse.Namespace) -> int:
    """Evaluate, write metrics.json, per_image_cm.npz, report.html and report.md."""
    test(config_from_args(TestConfig, args))
    return 0
