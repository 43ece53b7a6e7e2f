"""`seglab export RUN`: one flag per `ExportConfig` field."""

from __future__ import annotations

import argparse

from seglab.cli.flags import add_config_arguments, config_from_args
from seglab.config import ExportConfig
from seglab.export import export


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `seglab export` flags."""
    add_config_arguments(parser, ExportConfig)


def main(args: argparse.Namespace) -> int:
    """Export to ONNX and safetensors; verify the ONNX file against PyTorch."""
    export(config_from_args(ExportConfig, args))
    return 0
