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


def _at(value: float | None, step: int | None) -> str:
    """Return "mIoU @step" (or "-")."""
    return "-" if value is None else f"{tables.percent(value)} @{step}"


def main(args: argparse.Namespace) -> int:
    """List runs with their partial-val and full-val mIoU apart (best with its step, and last)."""
    cfg = config_from_args(RunsConfig, args)
    rows = [summarize_run(run) for run in list_runs(cfg.runs_root)]
    if cfg.json:
        print(json.dumps(rows, indent=1))
        return 0
    with_ema = any(r["ema_full_best_miou"] is not None for r in rows)
    header = ["run", "basenet", "decoder", "step", "partial best", "partial last", "full best", "full last"]
    header += ["EMA full best"] * with_ema + ["best.pt"]
    cells = []
    for r in rows:
        row = [
            r["run"],
            r["basenet"],
            r["decoder"],
            str(r["step"]),
            _at(r["partial_best_miou"], r["partial_best_step"]),
            tables.percent(r["partial_last_miou"], missing="-"),
            _at(r["full_best_miou"], r["full_best_step"]),
            _at(r["full_last_miou"], r["full_last_step"]),
        ]
        row += [tables.percent(r["ema_full_best_miou"], missing="-")] * with_ema
        row.append("-" if r["best_checkpoint_step"] is None else f"@{r['best_checkpoint_step']}")
        cells.append(row)
    print(tables.text(header, cells, left=3))
    print(
        "mIoU %: partial = a random part of val drawn anew at each evaluation (its best is an optimistic pick); "
        "full = all of val"
    )
    return 0
