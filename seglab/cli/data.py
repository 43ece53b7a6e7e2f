"""`seglab data check|stats|convert|list`: one flag per field of `DataCheckConfig`, `DataStatsConfig` and
`DataConvertConfig`."""

from __future__ import annotations

import argparse
import json

from seglab.cli.flags import add_config_arguments, config_from_args
from seglab.config import DataCheckConfig, DataConvertConfig, DatasetChoice, DataStatsConfig
from seglab.data import DATASETS, build_dataset, check_dataset
from seglab.data.base import SegmentationDataset
from seglab.data.stats import dataset_stats, format_stats
from seglab.data.voc import convert_sbd
from seglab.errors import ConfigError
from seglab.plugins import load_plugins

ACTIONS = {
    "check": (DataCheckConfig, "read every file of a split and report faults (exit 1 if any)"),
    "stats": (DataStatsConfig, "pixel frequency per class, class weights, object-size histogram"),
    "convert": (DataConvertConfig, "write SBD's .mat labels once as PNGs (voc_aug)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `check`, `stats`, `convert` and `list` actions."""
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION", parser_class=type(parser))
    for name, (cls, help_text) in ACTIONS.items():
        action = sub.add_parser(name, help=help_text, description=help_text)
        add_config_arguments(action, cls)
        action.set_defaults(_prog=action.prog)
    listed = sub.add_parser("list", help="list the registered datasets")
    listed.set_defaults(_prog=listed.prog)


def open_dataset(cfg: DatasetChoice, split: str) -> SegmentationDataset:
    """Return the dataset a `seglab data` action reads; list entries leaving the root become findings."""
    load_plugins(cfg.plugins)
    return build_dataset(cfg.dataset, cfg.data_root or None, split, strict=False, **cfg.dataset_options)


def main(args: argparse.Namespace) -> int:
    """Run the chosen `seglab data` action; return the exit status (1 when a check finds faults)."""
    if args.data_command == "list":
        load_plugins()
        for name in DATASETS.names():
            aliases = ", ".join(DATASETS.aliases(name))
            doc = (DATASETS[name].__doc__ or "").strip().splitlines()[0]
            print(f"{name:<12} {doc}" + (f" (aliases: {aliases})" if aliases else ""))
        return 0
    cfg = config_from_args(ACTIONS[args.data_command][0], args)
    if isinstance(cfg, DataConvertConfig):
        if DATASETS.canonical(cfg.dataset) != "voc_aug":
            raise ConfigError(f"--dataset {cfg.dataset}: only voc_aug has labels to convert (SBD .mat)")
        counts = convert_sbd(cfg.data_root, overwrite=cfg.overwrite)
        for failure in counts["failures"]:
            print(f"skipped: {failure}")
        print(
            f"SBD labels: {counts['written']} PNGs written, {counts['kept']} already there, {counts['failed']} failed"
        )
        return 1 if counts["failed"] else 0
    dataset = open_dataset(cfg, cfg.split)
    if isinstance(cfg, DataCheckConfig):
        report = check_dataset(dataset, quick=cfg.quick, workers=cfg.workers)
        print(json.dumps(report.as_dict(), indent=1) if cfg.json else report.format())
        return 1 if report.errors or (cfg.strict and report.warnings) else 0
    stats = dataset_stats(dataset, limit=cfg.limit)
    print(json.dumps(stats, indent=1) if cfg.json else format_stats(stats))
    return 0
