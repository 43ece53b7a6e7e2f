"""`seglab bench [RUN ...]`: one flag per `BenchConfig` field."""

from __future__ import annotations

import argparse

from seglab.bench import bench
from seglab.cli.flags import add_config_arguments, config_from_args
from seglab.config import BenchConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `seglab bench` flags."""
    add_config_arguments(parser, BenchConfig)


def main(args: argparse.Namespace) -> int:
    """Measure the runs or the grid; print the table, write --csv and --md."""
    bench(config_from_args(BenchConfig, args))
    return 0
