"""`seglab study FILE`: the study YAML holds `StudyConfig`'s keys; each field is also a flag that overrides it."""

from __future__ import annotations

import argparse
from pathlib import Path

from seglab.cli.flags import add_config_arguments, config_from_args
from seglab.config import StudyConfig, check_study
from seglab.study import run_study


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the study file and the `seglab study` flags."""
    parser.add_argument("config", metavar="FILE", help="study YAML (basenets, decoders, grid, seeds, train, test, ...)")
    add_config_arguments(parser, StudyConfig, config_file=False)


def main(args: argparse.Namespace) -> int:
    """Run every missing job of the study; write the tables, variance.json, plots and report.html."""
    study = check_study(config_from_args(StudyConfig, args), args.config)
    run_study(study, study.out or Path("studies") / Path(args.config).stem, args.config)
    return 0
