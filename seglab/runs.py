"""The run store: the one owner of the run-folder layout, used by every command.

A run folder ``<runs-root>/<YYYY-MM-DD>_<basenet>_<decoder>__<n>/`` holds::

    runargs.yaml        the resolved TrainConfig
    train.lock          while a trainer runs: its pid and host (a second trainer is refused)
    runlog              for people
    metrics.jsonl       for programs: one JSON record per logged step
    events.out.tfevents.*
    trackers.json       the MLflow / W&B run ids a resume continues (with `--logger mlflow,wandb`)
    checkpoints/        step_0000100.pt ... and last.pt (a hard link to the newest); best.pt with --keep-best;
                        an unloadable one is set aside as step_0000100.pt.bad
    eval/NAME/          one `seglab test` evaluation: metrics.json, per_image_cm.npz, report.html, report.md
    export/             `seglab export`: model.onnx, model.safetensors, export.json

This module creates run folders, resolves "a run folder or a checkpoint file" given on a command line,
lists and names step checkpoints, reads and truncates metrics.jsonl, writes files atomically (temp file in
the same folder, fsync, rename, fsync the folder), locks a run folder for its one trainer, and indexes the
evaluations under a runs root.
What goes *into* a checkpoint is `seglab.engine.checkpoint`'s business.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import io
import json
import os
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from seglab.errors import ConfigError, PathError, TrainingError

RUNARGS = "runargs.yaml"
RUNLOG = "runlog"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
TRACKERS = "trackers.json"
EVAL = "eval"
EXPORT = "export"
EVAL_METRICS = "metrics.json"
PER_IMAGE = "per_image_cm.npz"
COUNTS = "per_image_counts"
DENSE = "per_image_cm"
TEMP_MARK = ".tmp-"
LOCK = "train.lock"
BAD_SUFFIX = ".bad"
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
    try:
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
    except OSError as err:  # a full disk, a folder in the way, no permission: the old file stays as it was
        temp.unlink(missing_ok=True)
        raise PathError(f"cannot write {path}: {err.strerror or err}") from err
    return path


def remove_temp_files(folder: Path) -> list[str]:
    """Delete temp files left in `folder` by an interrupted atomic write; return their names."""
    stale = sorted(p for p in folder.glob(f".*{TEMP_MARK}*") if p.is_file())
    for path in stale:
        path.unlink()
    return [p.name for p in stale]


def set_aside(path: Path) -> Path:
    """Rename an unusable file to `<name>.bad` (`.bad-2`, ... when taken), keeping it for inspection; return
    the new path. Nothing that lists step checkpoints sees it again."""
    target, number = path.with_name(path.name + BAD_SUFFIX), 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}{BAD_SUFFIX}-{number}")
    os.replace(path, target)
    fsync_dir(path.parent)
    return target


def ensure_dir(path: str | Path, what: str) -> Path:
    """Create folder `path` (and its parents) for output; a file in the way or a denied permission is an
    error naming `what` (a flag or a role) and the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise PathError(f"{what} {path} cannot be created: {blocker} is a file, not a folder") from None
    except OSError as err:
        raise PathError(f"{what} {path} cannot be created: {err.strerror or err}") from None
    return path


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
    numbered = [(n, line) for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    records = []
    for i, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not a record with a 'step'")
        except ValueError as err:
            if torn_tail_ok and i == len(numbered) - 1:
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
        """Write metrics.json and per_image_cm.npz (the per-image statistics that bootstraps resample)."""
        ensure_dir(self.path, "evaluation folder")
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

    def read_per_image(self) -> dict[str, np.ndarray]:
        """Return per_image_cm.npz with `per_image_counts` [N, 3, C] (true positives, label pixels, predicted
        pixels per class) whichever seglab wrote it: files of seglab 0.2 and older hold dense per-image
        confusion matrices [N, C, C], which are reduced to those counts here."""
        arrays = self.read_arrays()
        if COUNTS not in arrays:
            if DENSE not in arrays:
                raise PathError(f"{self.per_image} holds neither {COUNTS} nor {DENSE}: run `seglab test` again")
            cm = arrays.pop(DENSE)
            arrays[COUNTS] = np.stack([cm.diagonal(axis1=1, axis2=2), cm.sum(2), cm.sum(1)], axis=1)
        arrays[COUNTS] = arrays[COUNTS].astype(np.int64)
        return arrays


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
    def best(self) -> Path:
        return self.checkpoints / BEST

    @property
    def trackers(self) -> Path:
        return self.path / TRACKERS

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


def _owner_text() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": f"{datetime.datetime.now():%c}"})


def _describe_owner(text: str) -> str:
    try:
        owner = json.loads(text)
        return f"pid {owner['pid']} on host {owner['host']}, since {owner['since']}"
    except (ValueError, TypeError, KeyError):
        return f"an unknown owner ({text.strip()[:80]!r})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


@dataclass
class RunLock:
    """A trainer's claim on its run folder: `RUN/train.lock` holds the owner's pid and host, and the owner
    holds an exclusive `flock` on it while it runs. The operating system drops the flock when the process
    dies, however it dies, so a lock file left by a killed trainer is recognised as stale and taken over
    (`stale` names its dead owner)."""

    path: Path
    fd: int
    stale: str = ""

    def release(self) -> None:
        """Remove the lock file and drop the claim (the file goes first, while the flock still guards it)."""
        if self.fd < 0:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = -1

    def __del__(self) -> None:  # a trainer that failed while starting must not keep its run folder locked
        with contextlib.suppress(Exception):  # at interpreter exit, say nothing: the OS drops the flock anyway
            self.release()


def lock_run(run: RunDir) -> RunLock:
    """Claim `run` for this trainer; a run folder another live trainer holds is an error naming its pid and
    host. Where the filesystem has no `flock` (some network mounts), a lock file whose owner is a live
    process on this host, or any process on another host, is honoured instead."""
    path = run.path / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _describe_owner(os.read(fd, 4096).decode(errors="replace"))
            os.close(fd)
            raise TrainingError(
                f"run folder {run.path} is in use by another `seglab train` ({owner}): two trainers would write "
                "the same checkpoints; wait for it to finish or stop it first"
            ) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            _check_owner_without_flock(fd, run)
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the previous owner removed the file between our open and flock: claim the new one
    previous = os.read(fd, 4096).decode(errors="replace").strip()
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, _owner_text().encode())
    os.fsync(fd)
    return RunLock(path, fd, _describe_owner(previous) if previous else "")


def _check_owner_without_flock(fd: int, run: RunDir) -> None:
    """Refuse a lock file whose recorded owner may still run (used where `flock` is not supported)."""
    text = os.read(fd, 4096).decode(errors="replace")
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        owner = json.loads(text) if text.strip() else None
    except ValueError:
        owner = None
    if not isinstance(owner, dict) or owner.get("pid") == os.getpid():
        return
    here = owner.get("host") == socket.gethostname()
    if here and isinstance(owner.get("pid"), int) and not _pid_alive(owner["pid"]):
        return
    os.close(fd)
    where = "" if here else "; seglab cannot check a process on another host: if none runs there, delete the file"
    raise TrainingError(
        f"run folder {run.path} is in use by another `seglab train` ({_describe_owner(text)}, see "
        f"{run.path / LOCK}){where}"
    )


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
    root = ensure_dir(runs_root, "--runs-root")
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
    (``last``, ``best``, ``step_9000`` or ``9000``) of the run folder at `path`; the first gets the full report."""
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
        if token in ("last", "best"):
            path = run.last if token == "last" else run.best
            if not path.is_file():
                hint = " (the run was trained without --keep-best)" if token == "best" else ""
                raise PathError(f"--checkpoints {token}: {path} is missing{hint}")
            chosen.append(Target(path, run, token))
            continue
        match = re.fullmatch(r"(?:step_)?(\d+)", token)
        if match is None or int(match.group(1)) not in steps:
            raise ConfigError(
                f"--checkpoints: no checkpoint {token!r} in {run.checkpoints}; it has last, best and {listing}"
                if run.best.is_file()
                else f"--checkpoints: no checkpoint {token!r} in {run.checkpoints}; it has last and {listing}"
            )
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


def _best_and_last(records: list[dict], key: str) -> dict:
    """Return {best, best_step, last, last_step} of `key` over the records that have it (None when none do)."""
    scored = [(r[key], r["step"]) for r in records if r.get(key) is not None]
    if not scored:
        return {"best": None, "best_step": None, "last": None, "last_step": None}
    best = max(scored, key=lambda item: (item[0], -item[1]))  # the earliest of equal scores
    return {"best": best[0], "best_step": best[1], "last": scored[-1][0], "last_step": scored[-1][1]}


def summarize_run(run: RunDir) -> dict:
    """Return one run's summary: name, basenet, decoder, last step, and the partial-val and full-val mIoU
    kept apart (best with its step, and last), with the EMA weights' full-val mIoU where the run keeps an
    EMA, and the step of checkpoints/best.pt where it keeps one (the last record marked `best_checkpoint`).

    Partial val is a random part of val drawn anew each time, so its best is an optimistic pick; only the
    full-val numbers are comparable between steps and runs.
    """
    runargs = run.read_runargs()
    records = run.read_metrics()
    partial, full = _best_and_last(records, "val_miou_partial"), _best_and_last(records, "val_miou")
    ema = _best_and_last(records, "val_miou_ema")
    marked = [r["step"] for r in records if r.get("best_checkpoint")]  # the records of steps best.pt was written at
    best_step = marked[-1] if marked and run.best.is_file() else None
    return {
        "run": run.name,
        "basenet": runargs.get("basenet", "?"),
        "decoder": runargs.get("decoder", "?"),
        "step": records[-1]["step"] if records else 0,
        "partial_best_miou": partial["best"],
        "partial_best_step": partial["best_step"],
        "partial_last_miou": partial["last"],
        "full_best_miou": full["best"],
        "full_best_step": full["best_step"],
        "full_last_miou": full["last"],
        "full_last_step": full["last_step"],
        "ema_full_best_miou": ema["best"],
        "ema_full_last_miou": ema["last"],
        "best_checkpoint_step": best_step,
    }
