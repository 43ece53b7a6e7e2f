"""`seglab data`: check a dataset's files, count its classes and objects, convert SBD labels, list datasets."""

from __future__ import annotations

import argparse
import json
import sys

import yaml


def _options(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--dataset-options: expected KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def _dataset_arguments(parser: argparse.ArgumentParser, default_split: str | None = "train") -> None:
    parser.add_argument("--dataset", required=True, help="dataset name (see `seglab data list`)")
    parser.add_argument("--data-root", help="dataset folder (see the README for each dataset's layout)")
    if default_split:
        parser.add_argument("--split", default=default_split, help=f"split (default {default_split})")
    parser.add_argument("--dataset-options", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dataset options, e.g. length=64 size=64 for synthetic")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `check`, `stats`, `convert` and `list` sub-subcommands."""
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="read every file of a split and report faults (exit 1 if any)")
    _dataset_arguments(check)
    check.add_argument("--quick", action="store_true", help="only lists and file presence (no decoding)")
    check.add_argument("--strict", action="store_true", help="warnings (e.g. 0/255 binary masks) fail too")
    check.add_argument("--workers", type=int, default=None, help="processes (default: cores, at most 8)")
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    stats = sub.add_parser("stats", help="pixel frequency per class, class weights, object-size histogram")
    _dataset_arguments(stats)
    stats.add_argument("--limit", type=int, default=None, help="only the first N samples")
    stats.add_argument("--json", action="store_true", help="print the statistics as JSON")
    convert = sub.add_parser("convert", help="write SBD's .mat labels once as PNGs (voc_aug)")
    _dataset_arguments(convert, default_split=None)
    convert.add_argument("--overwrite", action="store_true", help="rewrite PNGs that already exist")
    sub.add_parser("list", help="list the registered datasets")


def main(args: argparse.Namespace) -> int:
    """Run the chosen `seglab data` action; return the exit status."""
    from seglab.data import DATASETS, DatasetError, build_dataset

    if args.data_command == "list":
        for name in DATASETS.names():
            aliases = ", ".join(DATASETS.aliases(name))
            doc = (DATASETS[name].__doc__ or "").strip().splitlines()[0]
            print(f"{name:<12} {doc}" + (f" (aliases: {aliases})" if aliases else ""))
        return 0
    try:
        if args.data_command == "convert":
            return _convert(args)
        dataset = build_dataset(args.dataset, args.data_root, args.split, strict=False,
                                **_options(args.dataset_options))
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.data_command == "check":
        return _check(dataset, args)
    return _stats(dataset, args)


def _check(dataset, args: argparse.Namespace) -> int:
    from seglab.data.check import check_dataset

    report = check_dataset(dataset, quick=args.quick, workers=args.workers)
    print(json.dumps(report.as_dict(), indent=1) if args.json else report.format())
    failed = report.errors or (args.strict and report.warnings)
    return 1 if failed else 0


def _stats(dataset, args: argparse.Namespace) -> int:
    from seglab.data.stats import dataset_stats, format_stats

    stats = dataset_stats(dataset, limit=args.limit)
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from seglab.data.voc import convert_sbd

    if args.dataset not in ("voc_aug", "pascal_voc_aug"):
        raise SystemExit(f"seglab data convert: only voc_aug has labels to convert (SBD .mat), not {args.dataset!r}")
    counts = convert_sbd(args.data_root, overwrite=args.overwrite)
    print(f"SBD labels: {counts['written']} PNGs written, {counts['kept']} already there, {counts['failed']} failed")
    return 1 if counts["failed"] else 0
