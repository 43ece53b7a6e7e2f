"""`seglab runs`: one flag per `RunsConfig` field."""

from __future__ import annotations

import argparse
import json

from seglab import tables
from seglab.cli.flags import add_config_arguments, config_from_args
from seglab.config import RunsConfig
from seglab.runs import list_runs, summarize_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `seglab runs` flags."""
    add_config_arguments(parser, RunsConfig)


def main(args: argparse.Namespace) -> int:
    """List runs with their best, last and final mIoU."""
    cfg = config_from_args(RunsConfig, args)
    rows = [summarize_run(run) for run in list_runs(cfg.runs_root)]
    if cfg.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = ("run", "basenet", "decoder", "step", "best mIoU", "last mIoU", "final mIoU")
    cells = [
        (
            r["run"],
            r["basenet"],
            r["decoder"],
            str(r["step"]),
            tables.percent(r["best_miou"], missing="-"),
            tables.percent(r["last_miou"], missing="-"),
            tables.percent(r["final_miou"], missing="-"),
        )
        for r in rows
    ]
    print(tables.text(header, cells, left=3))
    return 0
