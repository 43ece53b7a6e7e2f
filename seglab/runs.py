"""The run store: the one owner of the run-folder layout, used by every command.

A run folder ``<runs-root>/<YYYY-MM-DD>_<basenet>_<decoder>__<n>/`` holds::

    runargs.yaml        the resolved TrainConfig
    runlog              for people
    metrics.jsonl       for programs: one JSON record per logged step
    events.out.tfevents.*
    checkpoints/        step_0000100.pt ... and last.pt (a hard link to the newest)
    eval/NAME/          one `seglab test` evaluation: metrics.json, per_image_cm.npz, report.html, report.md
    export/             `seglab export`: model.onnx, model.safetensors, export.json

This module creates run folders, resolves "a run folder or a checkpoint file" given on a command line,
lists and names step checkpoints, reads and truncates metrics.jsonl, writes files atomically (temp file in
the same folder, fsync, rename, fsync the folder), and indexes the evaluations under a runs root.
What goes *into* a checkpoint is `seglab.engine.checkpoint`'s business.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from seglab.errors import ConfigError, PathError

RUNARGS = "runargs.yaml"
RUNLOG = "runlog"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
EVAL = "eval"
EXPORT = "export"
EVAL_METRICS = "metrics.json"
PER_IMAGE = "per_image_cm.npz"
TEMP_MARK = ".tmp-"
STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
RUN_NUMBER = re.compile(r"__(\d+)$")

Hook = Callable[[str], None]


def fsync_dir(directory: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """Return the temp file a write of `path` goes to: same folder (same filesystem), hidden, per process."""
    return path.parent / f".{path.name}{TEMP_MARK}{os.getpid()}"


def atomic_write(path: str | Path, data: bytes | str, hook: Hook | None = None) -> Path:
    """Replace `path` with `data` atomically: temp file in the same folder, flush + fsync, rename, fsync the
    folder. A kill at any moment leaves either the old file or the new one, never a partial file.

    `hook(stage)` is called at "created", "mid-write" and "before-rename" (tests kill the writer there).
    """
    hook = hook or (lambda stage: None)
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    temp = temp_path(path)
    with open(temp, "wb") as f:
        hook("created")
        half = len(payload) // 2
        f.write(payload[:half])
        f.flush()
        hook("mid-write")
        f.write(payload[half:])
        f.flush()
        os.fsync(f.fileno())
    hook("before-rename")
    os.replace(temp, path)
    fsync_dir(path.parent)
    return path


def remove_temp_files(folder: Path) -> list[str]:
    """Delete temp files left in `folder` by an interrupted atomic write; return their names."""
    stale = sorted(p for p in folder.glob(f".*{TEMP_MARK}*") if p.is_file())
    for path in stale:
        path.unlink()
    return [p.name for p in stale]


def step_name(step: int) -> str:
    """Return the file name of the checkpoint at `step`."""
    return f"step_{step:07d}.pt"


def step_files(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """Return (step, path) of the complete step checkpoints in `ckpt_dir`, newest first."""
    found = []
    for path in ckpt_dir.glob("step_*.pt"):
        match = STEP_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def read_metrics(path: Path, *, torn_tail_ok: bool = False) -> list[dict]:
    """Return the records of a metrics.jsonl file (none when it does not exist).

    A line that is not a JSON record with a "step" is an error naming the file and line, except, with
    `torn_tail_ok`, the last one (a writer killed mid-line), which is dropped.
    """
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not a record with a 'step'")
        except ValueError as err:
            if torn_tail_ok and number == len(lines):
                break
            raise PathError(f"{path}:{number}: not a JSON record: {err}") from None
        records.append(record)
    return records


def truncate_metrics(path: Path, last_step: int) -> int:
    """Drop the records of metrics.jsonl after `last_step` (and a torn last line), atomically; return how many
    lines were dropped."""
    if not path.is_file():
        return 0
    total = sum(1 for line in path.read_text().splitlines() if line.strip())
    kept = [r for r in read_metrics(path, torn_tail_ok=True) if r["step"] <= last_step]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))
    return total - len(kept)


def check_run_name(name: str) -> str:
    """Return `name` if it is a plain folder name; raise if it could leave the runs root."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"--run-name {name!r} must be a plain folder name (no '/', '..', or leading '.')")
    return name


@dataclass(frozen=True)
class EvalDir:
    """One evaluation folder, RUN/eval/NAME (or any folder `seglab test --out` wrote)."""

    path: Path

    @property
    def metrics(self) -> Path:
        return self.path / EVAL_METRICS

    @property
    def per_image(self) -> Path:
        return self.path / PER_IMAGE

    @property
    def run(self) -> RunDir | None:
        """Return the run this evaluation belongs to, when it sits in a run's eval/ folder."""
        parent = self.path.parent
        if parent.name == EVAL and (parent.parent / RUNARGS).is_file():
            return RunDir(parent.parent)
        return None

    def exists(self) -> bool:
        """Return True when the evaluation has been written (its metrics.json exists)."""
        return self.metrics.is_file()

    def read_summary(self) -> dict:
        """Return metrics.json; a missing or unreadable file is an error naming it."""
        return read_json(self.metrics, f"run `seglab test` first (it writes {EVAL_METRICS})")

    def write(self, summary: dict, arrays: dict[str, np.ndarray]) -> None:
        """Write metrics.json and per_image_cm.npz (the per-image matrices that bootstraps resample)."""
        self.path.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write(self.per_image, buffer.getvalue())
        atomic_write(self.metrics, json.dumps(summary, indent=2) + "\n")

    def read_arrays(self) -> dict[str, np.ndarray]:
        """Return the arrays of per_image_cm.npz; a missing or unreadable file is an error naming it."""
        if not self.per_image.is_file():
            raise PathError(f"{self.per_image} is missing: run `seglab test` first (it writes {PER_IMAGE})")
        try:
            with np.load(self.per_image, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as err:
            raise PathError(f"{self.per_image} cannot be read ({err}): run `seglab test` again") from None


def read_json(path: Path, hint: str) -> dict:
    """Return a JSON object from `path`; a missing or malformed file is an error naming it (and `hint`)."""
    if not path.is_file():
        raise PathError(f"{path} is missing: {hint}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise PathError(f"{path} cannot be read ({err}): {hint}") from None
    if not isinstance(data, dict):
        raise PathError(f"{path} holds a {type(data).__name__}, not a JSON object: {hint}")
    return data


@dataclass(frozen=True)
class RunDir:
    """A run folder and the paths of everything in it."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def runargs(self) -> Path:
        return self.path / RUNARGS

    @property
    def runlog(self) -> Path:
        return self.path / RUNLOG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def export_dir(self) -> Path:
        return self.path / EXPORT

    def eval_dir(self, name: str) -> EvalDir:
        """Return the evaluation folder RUN/eval/NAME."""
        return EvalDir(self.path / EVAL / name)

    def evaluations(self) -> list[EvalDir]:
        """Return the written evaluations of this run, by name."""
        return [EvalDir(p.parent) for p in sorted((self.path / EVAL).glob(f"*/{EVAL_METRICS}"))]

    def step_files(self) -> list[tuple[int, Path]]:
        """Return (step, path) of the run's step checkpoints, newest first."""
        return step_files(self.checkpoints)

    def read_runargs(self) -> dict:
        """Return runargs.yaml as a mapping (every TrainConfig key)."""
        try:
            data = yaml.safe_load(self.runargs.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise PathError(f"{self.runargs} cannot be read ({err})") from None
        if not isinstance(data, dict):
            raise PathError(f"{self.runargs} holds a {type(data).__name__}, not a mapping of config keys")
        return data

    def read_metrics(self) -> list[dict]:
        """Return the records of the run's metrics.jsonl."""
        return read_metrics(self.metrics)


def is_run(path: Path) -> bool:
    """Return True when `path` is a run folder (it holds runargs.yaml)."""
    return (path / RUNARGS).is_file()


def open_run(path: str | Path) -> RunDir:
    """Return the run folder at `path`; a missing path or a folder that is no run is an error saying so."""
    path = Path(path)
    if not path.exists():
        raise PathError(f"{path} does not exist: give a run folder (one holding {RUNARGS})")
    if not path.is_dir() or not is_run(path):
        raise PathError(f"{path} is not a run folder: it has no {RUNARGS} (give a folder `seglab train` wrote)")
    return RunDir(path)


def new_run(runs_root: str | Path, basenet: str, decoder: str, run_name: str = "") -> RunDir:
    """Create and return a new run folder: `run_name`, or <date>_<basenet>_<decoder>__<next n>."""
    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    if run_name:
        path = root / check_run_name(run_name)
        if not path.resolve().is_relative_to(root.resolve()):
            raise ConfigError(f"--run-name {run_name!r} resolves outside the runs root {root}")
        if path.exists():
            raise ConfigError(f"run folder {path} already exists; pick another --run-name or use --resume {path}")
        path.mkdir()
        return RunDir(path)
    prefix = f"{datetime.date.today():%Y-%m-%d}_{basenet}_{decoder}__"
    taken = [int(m.group(1)) for p in root.glob(prefix + "*") if (m := RUN_NUMBER.search(p.name))]
    number = max(taken, default=0) + 1
    while True:  # another process may take a number between the glob and mkdir
        path = root / f"{prefix}{number}"
        try:
            path.mkdir()
            return RunDir(path)
        except FileExistsError:
            number += 1


@dataclass(frozen=True)
class Target:
    """What a command line named: a checkpoint or exported-model file and its run (None for a loose file)."""

    checkpoint: Path
    run: RunDir | None
    name: str  # "last" (the run folder, or its last.pt), "step_<n>" (chosen by step) or the file's stem


def resolve_target(path: str | Path) -> Target:
    """Return the checkpoint a command was pointed at: a run folder means its checkpoints/last.pt; a file
    inside <run>/checkpoints/ (or an exported model in <run>/export/) belongs to that run; any other file
    is a loose checkpoint."""
    path = Path(path)
    if not path.exists():
        raise PathError(f"{path} does not exist: give a run folder or a checkpoint file")
    if path.is_dir():
        run = open_run(path)
        if not run.last.is_file():
            raise PathError(
                f"run folder {path} has no {CHECKPOINTS}/{LAST}: it stopped before its first "
                "checkpoint, or give a checkpoint file"
            )
        return Target(run.last, run, "last")
    parent = path.parent
    run = RunDir(parent.parent) if parent.name in (CHECKPOINTS, EXPORT) and is_run(parent.parent) else None
    return Target(path, run, path.stem)


def choose_checkpoints(path: str | Path, names: Sequence[str] = (), last_k: int | None = None) -> list[Target]:
    """Return the checkpoints to evaluate: the target itself, the K newest step files, or named ones
    (``last``, ``step_9000`` or ``9000``) of the run folder at `path`; the first gets the full report."""
    if not names and last_k is None:
        return [resolve_target(path)]
    run = open_run(path)
    steps = dict(run.step_files())
    listing = ", ".join(f"step_{s}" for s in sorted(steps)) or "none"
    if last_k is not None:
        if len(steps) < last_k:
            raise ConfigError(f"--last-k {last_k}: {run.checkpoints} holds {len(steps)} step checkpoints ({listing})")
        return [Target(steps[s], run, f"step_{s}") for s in sorted(steps, reverse=True)[:last_k]]
    chosen = []
    for token in (t.strip() for t in names if t.strip()):
        if token == "last":
            if not run.last.is_file():
                raise PathError(f"--checkpoints last: {run.last} is missing")
            chosen.append(Target(run.last, run, "last"))
            continue
        match = re.fullmatch(r"(?:step_)?(\d+)", token)
        if match is None or int(match.group(1)) not in steps:
            raise ConfigError(f"--checkpoints: no checkpoint {token!r} in {run.checkpoints}; it has last and {listing}")
        step = int(match.group(1))
        chosen.append(Target(steps[step], run, f"step_{step}"))
    return chosen


def list_runs(runs_root: str | Path) -> list[RunDir]:
    """Return every run folder directly under `runs_root`, by name."""
    root = Path(runs_root)
    if not root.is_dir():
        raise PathError(f"runs root {root} does not exist (set it with --runs-root)")
    return [RunDir(p) for p in sorted(root.iterdir()) if p.is_dir() and is_run(p)]


def evaluated_runs(runs_root: str | Path) -> Iterator[tuple[RunDir, dict, EvalDir, dict]]:
    """Yield (run, runargs, evaluation, its metrics.json) for every evaluation under `runs_root`, at any depth
    (a study keeps its runs in <study>/runs/)."""
    for runargs_file in sorted(Path(runs_root).glob(f"**/{RUNARGS}")):
        run = RunDir(runargs_file.parent)
        runargs = run.read_runargs()
        for evaluation in run.evaluations():
            yield run, runargs, evaluation, evaluation.read_summary()


def summarize_run(run: RunDir) -> dict:
    """Return one run's summary: name, basenet, decoder, last step, best and last mIoU (partial or full
    val, whichever came), and the final full-val mIoU."""
    runargs = run.read_runargs()
    records = run.read_metrics()
    scores = [r[k] for r in records for k in ("val_miou_partial", "val_miou") if r.get(k) is not None]
    final = [r["val_miou"] for r in records if r.get("val_miou") is not None]
    return {
        "run": run.name,
        "basenet": runargs.get("basenet", "?"),
        "decoder": runargs.get("decoder", "?"),
        "step": records[-1]["step"] if records else 0,
        "best_miou": max(scores) if scores else None,
        "last_miou": scores[-1] if scores else None,
        "final_miou": final[-1] if final else None,
    }
