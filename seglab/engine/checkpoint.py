"""Crash-safe checkpoints: atomic writes, new-before-old pruning, complete state, `weights_only` loading.

Layout of ``<run>/checkpoints/``: ``step_0000100.pt`` files and ``last.pt``, a hard link to the newest
one. A write goes to a temp file in the same directory, is fsynced and renamed, then the directory is
fsynced; only then is ``last.pt`` moved and are older files pruned, keeping the newest two and every
``--keep`` multiple. A kill at any moment therefore leaves the previous complete checkpoint in place.
Checkpoints hold plain data only (tensors, numbers, strings), so `torch.load(weights_only=True)` reads
them without an allow-list; a file that fails to load is reported by name and the previous one is used.
"""

from __future__ import annotations

import io
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from seglab.config import TrainConfig, from_dict

FORMAT = 1
REQUIRED = ("format", "model", "optimizer", "scheduler", "scaler", "step", "epoch", "position", "rng",
            "config", "dataset", "counters")
RNG_KEYS = ("python", "numpy", "torch", "cuda")
STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
TEMP_MARK = ".tmp-"

Hook = Callable[[str], None]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, incomplete, or not matching the run."""


def step_name(step: int) -> str:
    """Return the file name of the checkpoint at `step`."""
    return f"step_{step:07d}.pt"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _no_hook(stage: str) -> None:
    """Default test hook: does nothing (tests use hooks to kill the writer at each stage)."""


def atomic_save(obj: dict, path: Path, hook: Hook = _no_hook) -> None:
    """Write `obj` with torch.save to `path` atomically: temp file in the same folder, fsync, rename."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    temp = path.parent / f".{path.name}{TEMP_MARK}{os.getpid()}"
    with open(temp, "wb") as f:
        hook("created")
        half = len(data) // 2
        f.write(data[:half])
        f.flush()
        hook("mid-write")
        f.write(data[half:])
        f.flush()
        os.fsync(f.fileno())
    hook("before-rename")
    os.replace(temp, path)
    _fsync_dir(path.parent)


def _point_last(ckpt_dir: Path, target: Path) -> None:
    """Make last.pt the same file as `target` (hard link; a copy where links are not supported)."""
    temp = ckpt_dir / f".last.pt{TEMP_MARK}{os.getpid()}"
    temp.unlink(missing_ok=True)
    try:
        os.link(target, temp)
    except OSError:  # filesystems without hard links: an fsynced copy gives the same guarantee
        shutil.copyfile(target, temp)
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(temp, ckpt_dir / "last.pt")
    _fsync_dir(ckpt_dir)


def step_files(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """Return (step, path) of the complete step checkpoints in `ckpt_dir`, newest first."""
    found = []
    for path in ckpt_dir.glob("step_*.pt"):
        match = STEP_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def remove_temp_files(ckpt_dir: Path) -> list[str]:
    """Delete temp files left by an interrupted write; return their names."""
    stale = sorted(p for p in ckpt_dir.glob(f".*{TEMP_MARK}*") if p.is_file())
    for path in stale:
        path.unlink()
    return [p.name for p in stale]


def save_checkpoint(state: dict, ckpt_dir: Path, step: int, keep_every: int, hook: Hook = _no_hook) -> Path:
    """Write the checkpoint of `step`, point last.pt at it, then prune older ones; return its path.

    Pruning keeps the two newest checkpoints and every step that is a multiple of `keep_every` (> 0).
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / step_name(step)
    atomic_save(state, path, hook)
    _point_last(ckpt_dir, path)
    hook("before-prune")
    for rank, (old_step, old_path) in enumerate(step_files(ckpt_dir)):
        if rank >= 2 and not (keep_every > 0 and old_step % keep_every == 0):
            old_path.unlink()
    remove_temp_files(ckpt_dir)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file with weights_only=True and check that every entry is present."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # any unpickling failure is reported with the file's name, never retried unsafely
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a seglab checkpoint")
    missing = [k for k in REQUIRED if k not in state]
    ranks = state.get("rng", [])
    if not isinstance(ranks, list) or not ranks:
        missing.append("rng (one entry per rank)")
    else:
        missing += [f"rng[{r}].{k}" for r, entry in enumerate(ranks) for k in RNG_KEYS
                    if not isinstance(entry, dict) or k not in entry]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete; missing entries: {', '.join(missing)}")
    if state["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state['format']}, this seglab reads {FORMAT}")
    return state


def find_resumable(ckpt_dir: Path, report: Callable[[str], None]) -> tuple[Path, dict]:
    """Return (path, state) of the newest checkpoint that loads; unreadable ones are reported and skipped.

    An incomplete checkpoint (missing entries) is an error, not skipped: it means a bug, not a crash.
    """
    candidates = [p for _, p in step_files(ckpt_dir)]
    if (ckpt_dir / "last.pt").is_file():
        candidates.append(ckpt_dir / "last.pt")
    if not candidates:
        raise CheckpointError(f"no checkpoint in {ckpt_dir}")
    for path in candidates:
        try:
            return path, read_checkpoint(path)
        except CheckpointError as err:
            if "cannot be loaded" not in str(err):
                raise
            report(f"{err}; trying the previous checkpoint")
    raise CheckpointError(f"none of the checkpoints in {ckpt_dir} can be loaded: "
                          f"{', '.join(p.name for p in candidates)}")


def rng_state() -> dict:
    """Return this process's RNG states (python, numpy, torch CPU, CUDA) as plain data."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict, where: str) -> None:
    """Restore RNG states saved by `rng_state`; raise naming any missing or malformed entry."""
    missing = [k for k in RNG_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{where}: RNG state lacks {', '.join(missing)}")
    try:
        random.setstate(state["python"])
        np.random.set_state({"bit_generator": "MT19937",
                             "state": {"key": state["numpy"]["key"].numpy().astype(np.uint32),
                                       "pos": state["numpy"]["pos"]},
                             "has_gauss": state["numpy"]["has_gauss"], "gauss": state["numpy"]["gauss"]})
        torch.set_rng_state(state["torch"])
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as err:
        raise CheckpointError(f"{where}: RNG state is corrupt: {type(err).__name__}: {err}") from err
    if torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise CheckpointError(f"{where}: RNG state has {len(state['cuda'])} CUDA generators, this machine "
                                  f"has {torch.cuda.device_count()} GPUs")
        torch.cuda.set_rng_state_all(state["cuda"])


def config_of(state: dict, where: str) -> TrainConfig:
    """Return the TrainConfig stored in a checkpoint."""
    return from_dict(yaml.safe_load(state["config"]), where)


def checkpoint_path(path: str | Path) -> Path:
    """Return the checkpoint file for a run folder (its checkpoints/last.pt) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if not last.is_file():
            raise FileNotFoundError(f"run folder {path} has no checkpoints/last.pt")
        return last
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Return (model in eval mode, resolved runargs) from a run folder or a checkpoint file.

    The runargs dict holds every TrainConfig key plus ``step``, ``class_names`` and ``ignore_index``.
    """
    from seglab.models import build_model

    file = checkpoint_path(path)
    state = read_checkpoint(file, map_location)
    config = config_of(state, str(file))
    model = build_model(config.basenet, config.decoder, config.num_classes, config.output_stride,
                        pretrained=None, **config.decoder_options)
    model.load_state_dict(state["model"])
    model.to(map_location).eval()
    runargs = yaml.safe_load(state["config"])
    runargs.update(step=state["step"], class_names=list(state["dataset"]["class_names"]),
                   ignore_index=state["dataset"]["ignore_index"])
    return model, runargs
