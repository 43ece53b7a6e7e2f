"""`seglab compare RUN_A RUN_B ...`: one flag per `CompareConfig` field."""

from __future__ import annotations

import argparse

from seglab.cli.flags import add_config_arguments, config_from_args
from seglab.compare import compare_runs
from seglab.config import CompareConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `seglab compare` flags."""
    add_config_arguments(parser, CompareConfig)


def main(args: argparse.Namespace) -> int:
    """Print the comparison and write it to --out."""
    compare_runs(config_from_args(CompareConfig, args))
    return 0
