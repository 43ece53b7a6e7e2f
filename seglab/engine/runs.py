"""Run folders (``<runs-root>/<YYYY-MM-DD>_<basenet>_<decoder>__<n>/``) and the `seglab runs` subcommand."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import sys
from pathlib import Path

import yaml

RUN_NUMBER = re.compile(r"__(\d+)$")


def check_run_name(name: str) -> str:
    """Return `name` if it is a plain folder name; raise if it could leave the runs root."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"--run-name {name!r} must be a plain folder name (no '/', '..', or leading '.')")
    return name


def new_run_dir(runs_root: str | Path, basenet: str, decoder: str, run_name: str = "") -> Path:
    """Create and return a new run folder: `run_name`, or <date>_<basenet>_<decoder>__<next n>."""
    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    if run_name:
        path = root / check_run_name(run_name)
        if not path.resolve().is_relative_to(root.resolve()):
            raise ValueError(f"--run-name {run_name!r} resolves outside the runs root {root}")
        if path.exists():
            raise ValueError(f"run folder {path} already exists; pick another --run-name or use --resume {path}")
        path.mkdir()
        return path
    prefix = f"{datetime.date.today():%Y-%m-%d}_{basenet}_{decoder}__"
    taken = [int(m.group(1)) for p in root.glob(prefix + "*") if (m := RUN_NUMBER.search(p.name))]
    number = max(taken, default=0) + 1
    while True:  # another process may take a number between the glob and mkdir
        path = root / f"{prefix}{number}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            number += 1


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically (temp file in the same folder, then rename)."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_text(text)
    os.replace(temp, path)


def read_metrics(run_dir: Path) -> list[dict]:
    """Return the records of a run's metrics.jsonl (an empty list when there is none)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON object: {err}") from err
    return records


def summarize(run_dir: Path) -> dict:
    """Return one run's summary: name, basenet, decoder, last step, best and last mIoU (partial or full
    val, whichever came), and the final full-val mIoU."""
    runargs = yaml.safe_load((run_dir / "runargs.yaml").read_text()) or {}
    records = read_metrics(run_dir)
    scores = [r[k] for r in records for k in ("val_miou_partial", "val_miou") if r.get(k) is not None]
    final = [r["val_miou"] for r in records if r.get("val_miou") is not None]
    return {
        "run": run_dir.name,
        "basenet": runargs.get("basenet", "?"),
        "decoder": runargs.get("decoder", "?"),
        "step": records[-1]["step"] if records else 0,
        "best_miou": max(scores) if scores else None,
        "last_miou": scores[-1] if scores else None,
        "final_miou": final[-1] if final else None,
    }


def list_runs(runs_root: str | Path) -> list[dict]:
    """Return the summaries of every run folder (one holding runargs.yaml) under `runs_root`, by name."""
    root = Path(runs_root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs root {root} does not exist")
    return [summarize(p) for p in sorted(root.iterdir()) if (p / "runargs.yaml").is_file()]


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def format_table(rows: list[dict]) -> str:
    """Return the runs as an aligned text table (mIoU in percent)."""
    header = ("run", "basenet", "decoder", "step", "best mIoU", "last mIoU", "final mIoU")
    cells = [header] + [(r["run"], r["basenet"], r["decoder"], str(r["step"]), _percent(r["best_miou"]),
                         _percent(r["last_miou"]), _percent(r["final_miou"])) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `seglab runs` flags."""
    parser.add_argument("--runs-root", default="runs", help="folder holding the run folders (default: runs)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    """List runs with their best, last and final mIoU."""
    try:
        rows = list_runs(args.runs_root)
    except (FileNotFoundError, ValueError) as err:
        print(f"seglab runs: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0
