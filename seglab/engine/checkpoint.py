"""Crash-safe checkpoints: complete state, atomic writes, new-before-old pruning, `weights_only` loading.

Layout of ``<run>/checkpoints/`` (the run store, `seglab.runs`, names the files): ``step_0000100.pt`` files
and ``last.pt``, a hard link to the newest one (``best.pt``, with `--keep-best`, links the step of the
best full-val mIoU). A write goes to a temp file in the same directory, is
fsynced and renamed, then the directory is fsynced; only then is ``last.pt`` moved and are older files
pruned, keeping the newest two and every ``--keep`` multiple. A kill at any moment therefore leaves the
previous complete checkpoint in place. Checkpoints hold plain data only (tensors, numbers, strings), so
`torch.load(weights_only=True)` reads them without an allow-list; the zip CRCs are checked first (bit rot
in tensor data would otherwise load). Every entry, nested ones included, is validated on load.

A file that does not load (`UnloadableCheckpoint`) makes a resume fall back to the previous checkpoint;
`heal` then sets the bad file aside as ``step_N.pt.bad`` (which pruning never counts) and points
``last.pt`` at the good one. An I/O error or a lack of memory is no reason to fall back (the next file
would fail the same way, and older work would silently replace newer): it stops with its own message.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import yaml

from seglab import plugins
from seglab.config import TrainConfig, from_dict
from seglab.errors import CheckpointError, ConfigError, UnloadableCheckpoint
from seglab.models import SegmentationModel, build_model
from seglab.runs import (
    BEST,
    LAST,
    Hook,
    RunDir,
    Target,
    atomic_write,
    fsync_dir,
    remove_temp_files,
    resolve_target,
    set_aside,
    step_files,
    step_name,
    temp_path,
)

FORMAT = 1
REQUIRED = (
    "format",
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "step",
    "epoch",
    "position",
    "rng",
    "config",
    "dataset",
    "counters",
)
RNG_KEYS = ("python", "numpy", "torch", "cuda")
PENDING_EVALUATIONS = ("partial", "full", "final")
# What torch.load and zipfile raise for a file that is torn, damaged or not a checkpoint (found by fuzzing
# saved checkpoints); OSError (I/O) and MemoryError are deliberately not here.
LOAD_ERRORS = (
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    RuntimeError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    AttributeError,
    NotImplementedError,
)


def _point_last(ckpt_dir: Path, target: Path, name: str = LAST, hook: Hook | None = None) -> None:
    """Make last.pt (or `name`) the same file as `target` (hard link; a copy where links are not supported)."""
    last = ckpt_dir / name
    temp = temp_path(last)
    temp.unlink(missing_ok=True)
    try:
        os.link(target, temp)
    except OSError:  # filesystems without hard links: an fsynced copy gives the same guarantee
        shutil.copyfile(target, temp)
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
    if hook is not None:
        hook("last-linked")
    os.replace(temp, last)
    fsync_dir(ckpt_dir)


def save_checkpoint(state: dict, ckpt_dir: Path, step: int, keep_every: int, hook: Hook | None = None) -> Path:
    """Write the checkpoint of `step`, point last.pt at it, then prune older ones; return its path.

    Pruning keeps the two newest checkpoints and every step that is a multiple of `keep_every` (> 0).
    `hook(stage)` is called at each stage of the write ("created", "mid-write", "before-rename" of the
    file, "last-linked" before last.pt is replaced, "before-prune", "mid-prune"): tests kill the writer there.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = atomic_write(ckpt_dir / step_name(step), buffer.getvalue(), hook)
    _point_last(ckpt_dir, path, hook=hook)
    if hook is not None:
        hook("before-prune")
    pruned = 0
    for rank, (old_step, old_path) in enumerate(step_files(ckpt_dir)):
        if rank >= 2 and not (keep_every > 0 and old_step % keep_every == 0):
            old_path.unlink()
            pruned += 1
            if hook is not None and pruned == 1:
                hook("mid-prune")
    remove_temp_files(ckpt_dir)
    return path


def _check_zip(path: Path) -> None:
    """Raise zipfile.BadZipFile when a member of the checkpoint's zip fails its CRC (damaged data)."""
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise zipfile.BadZipFile(f"{bad} fails its CRC check (the file is damaged)")


def keep_best(ckpt_dir: Path, target: Path) -> Path:
    """Make best.pt the same file as the checkpoint `target` (already written), atomically; pruning the step
    file later leaves best.pt, a link of its own."""
    _point_last(ckpt_dir, target, BEST)
    return ckpt_dir / BEST


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file with weights_only=True and validate every entry.

    A file that does not load is an `UnloadableCheckpoint`; an I/O error or a lack of memory is a plain
    `CheckpointError` (no fallback); a missing or malformed entry is a `CheckpointError` listing them.
    """
    path = Path(path)
    try:
        _check_zip(path)
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read: {err.strerror or err} (an I/O error, not a damaged file: check "
            "the disk, the mount and the permissions; no older checkpoint is used instead)"
        ) from err
    except (MemoryError, torch.OutOfMemoryError) as err:  # the latter would otherwise pass as a RuntimeError
        raise CheckpointError(
            f"checkpoint {path} ({path.stat().st_size / 1e6:.0f} MB) does not fit in the free memory; free "
            "memory and retry (no older checkpoint is used instead)"
        ) from err
    except LOAD_ERRORS as err:  # never retried with weights_only=False
        first = str(err).splitlines()[0] if str(err) else ""
        raise UnloadableCheckpoint(f"checkpoint {path} cannot be loaded: {type(err).__name__}: {first}") from err
    if not isinstance(state, dict):
        raise UnloadableCheckpoint(f"checkpoint {path} holds a {type(state).__name__}, not a seglab checkpoint")
    missing = [k for k in REQUIRED if k not in state]
    ranks = state.get("rng", [])
    if not isinstance(ranks, list) or not ranks:
        missing.append("rng (one entry per rank)")
    else:
        missing += [
            f"rng[{r}].{k}"
            for r, entry in enumerate(ranks)
            for k in RNG_KEYS
            if not isinstance(entry, dict) or k not in entry
        ]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete; missing entries: {', '.join(missing)}")
    if state["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state['format']!r}, this seglab reads {FORMAT}")
    state.setdefault("pending", {})  # checkpoints written before pending evaluations existed
    problems = entry_problems(state)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
        raise CheckpointError(f"checkpoint {path} has malformed entries: {shown}")
    try:
        config = config_of(state, f"checkpoint {path} config")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    names = state["dataset"]["class_names"]
    if config.num_classes and len(names) != config.num_classes:
        raise CheckpointError(
            f"checkpoint {path} has malformed entries: dataset.class_names lists {len(names)} classes, "
            f"its config has num_classes {config.num_classes}"
        )
    return state


def _is_int(value: object, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rng_problems(entry: object, where: str) -> list[str]:
    if not isinstance(entry, dict):
        return [f"{where} must be a mapping of RNG states"]
    problems = []
    python = entry.get("python")
    if not (
        isinstance(python, tuple)
        and len(python) == 3
        and _is_int(python[0])
        and isinstance(python[1], tuple)
        and all(_is_int(v) for v in python[1])
        and (python[2] is None or isinstance(python[2], float))
    ):
        problems.append(f"{where}.python must be a Python random.getstate() tuple")
    numpy = entry.get("numpy")
    if not (
        isinstance(numpy, dict)
        and isinstance(numpy.get("key"), torch.Tensor)
        and numpy["key"].dtype == torch.int64
        and tuple(numpy["key"].shape) == (624,)
        and _is_int(numpy.get("pos"))
        and _is_int(numpy.get("has_gauss"))
        and _is_number(numpy.get("gauss"))
    ):
        problems.append(f"{where}.numpy must be an MT19937 state (key int64[624], pos, has_gauss, gauss)")
    if not (isinstance(entry.get("torch"), torch.Tensor) and entry["torch"].dtype == torch.uint8):
        problems.append(f"{where}.torch must be a uint8 tensor")
    cuda = entry.get("cuda")
    if not (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda)):
        problems.append(f"{where}.cuda must be a list of uint8 tensors")
    return problems


def entry_problems(state: dict) -> list[str]:
    """Return what is wrong with the entries of a complete checkpoint (nested ones included); [] when valid."""
    problems = []

    def need(ok: bool, text: str) -> None:
        if not ok:
            problems.append(text)

    model = state["model"]
    need(
        isinstance(model, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()),
        "model must be a state dict of named tensors",
    )
    optimizer = state["optimizer"]
    need(
        isinstance(optimizer, dict)
        and isinstance(optimizer.get("state"), dict)
        and isinstance(optimizer.get("param_groups"), list)
        and all(isinstance(g, dict) for g in optimizer["param_groups"]),
        "optimizer must be an optimizer state dict (state, param_groups)",
    )
    for key in ("scheduler", "scaler"):
        need(isinstance(state[key], dict), f"{key} must be a state dict")
    for key in ("step", "epoch", "position"):
        need(_is_int(state[key]), f"{key} must be a non-negative int, got {state[key]!r}")
    ranks = state["rng"]
    for rank, entry in enumerate(ranks):
        problems += _rng_problems(entry, f"rng[{rank}]")
    need(isinstance(state["config"], str), "config must be YAML text")
    counters = state["counters"]
    need(
        isinstance(counters, dict) and all(isinstance(k, str) and _is_number(v) for k, v in counters.items()),
        "counters must map names to numbers",
    )
    dataset = state["dataset"]
    if isinstance(dataset, dict):
        names = dataset.get("class_names")
        need(
            isinstance(names, list) and bool(names) and all(isinstance(n, str) for n in names),
            "dataset.class_names must be a non-empty list of names",
        )
        need(
            _is_int(dataset.get("ignore_index")) and dataset["ignore_index"] <= 255,
            "dataset.ignore_index must be an int in [0, 255]",
        )
        need(_is_int(dataset.get("num_train")), "dataset.num_train must be a non-negative int")
    else:
        problems.append("dataset must be a mapping (class_names, ignore_index, num_train)")
    pending = state["pending"]
    need(
        isinstance(pending, dict)
        and (
            not pending
            or (
                pending.get("eval") in PENDING_EVALUATIONS
                and isinstance(pending.get("record"), dict)
                and pending["record"].get("step") == state["step"]
            )
        ),
        "pending must be {} or an evaluation (partial, full or final) with the record of its step",
    )
    if "ema" in state:  # --ema: the averaged weights
        ema = state["ema"]
        need(
            isinstance(ema, dict)
            and _is_number(ema.get("decay"))
            and _is_int(ema.get("updates"))
            and isinstance(ema.get("model"), dict)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ema["model"].items()),
            "ema must hold decay, updates and the averaged model's state dict",
        )
    if "best" in state:  # --keep-best: the best full-val score so far
        best = state["best"]
        need(
            isinstance(best, dict)
            and _is_int(best.get("step"))
            and _is_number(best.get("miou"))
            and best.get("key") in ("val_miou", "val_miou_ema"),
            "best must hold the step, mIoU and key of the best full evaluation",
        )
    return problems


class Resumable(NamedTuple):
    """What `find_resumable` found: the newest checkpoint that loads, its state, and the newer files that
    did not load (to be set aside by `heal`)."""

    path: Path
    state: dict
    unloadable: list[Path]


def find_resumable(ckpt_dir: Path, report: Callable[[str], None]) -> Resumable:
    """Return the newest checkpoint that loads; unloadable ones are reported and skipped (nothing is changed
    on disk: `heal` does that, once the run is locked).

    Only an `UnloadableCheckpoint` falls back: an I/O error, a lack of memory or malformed entries stop.
    """
    last = ckpt_dir / LAST
    candidates = [p for _, p in step_files(ckpt_dir)]
    if last.is_file() and not any(os.path.samefile(last, p) for p in candidates):
        candidates.append(last)
    if not candidates:
        raise CheckpointError(
            f"no checkpoint in {ckpt_dir}: the run stopped before its first one; start it again with "
            f"`seglab train --config {ckpt_dir.parent / 'runargs.yaml'}`"
        )
    unloadable: list[Path] = []
    for path in candidates:
        try:
            return Resumable(path, read_checkpoint(path), unloadable)
        except UnloadableCheckpoint as err:
            unloadable.append(path)
            report(f"{err}; trying the previous checkpoint")
    raise CheckpointError(
        f"none of the checkpoints in {ckpt_dir} can be loaded: {', '.join(p.name for p in candidates)}"
    )


def heal(ckpt_dir: Path, good: Path, unloadable: Sequence[Path]) -> list[str]:
    """Set aside each unloadable checkpoint as `<name>.bad` and point last.pt at `good`; return what was
    done, one line each, for the runlog."""
    last = ckpt_dir / LAST
    notes = []
    # last.pt usually is a hard link of the newest step file: then it needs re-pointing, not keeping
    last_is_copy = last.exists() and not any(p.exists() and os.path.samefile(last, p) for p in unloadable if p != last)
    for path in unloadable:
        if path.exists() and (path != last or last_is_copy):
            notes.append(f"set aside the unloadable checkpoint {path.name} as {set_aside(path).name}")
    if good != last and not (last.exists() and os.path.samefile(last, good)):
        _point_last(ckpt_dir, good)
        notes.append(f"{LAST} now points at {good.name}, the newest checkpoint that loads")
    return notes


def rng_state() -> dict:
    """Return this process's RNG states (python, numpy, torch CPU, CUDA) as plain data."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict, where: str) -> str:
    """Restore RNG states saved by `rng_state`; raise naming any missing or malformed entry.

    The CUDA generators of this machine get the saved states they have a counterpart for: a checkpoint
    written on a CPU-only machine has none (its run never drew from them), one written on a machine with
    another GPU count restores the devices both have. Returns a note saying so ("" when the counts match).
    """
    missing = [k for k in RNG_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{where}: RNG state lacks {', '.join(missing)}")
    try:
        random.setstate(state["python"])
        np.random.set_state(
            {
                "bit_generator": "MT19937",
                "state": {"key": state["numpy"]["key"].numpy().astype(np.uint32), "pos": state["numpy"]["pos"]},
                "has_gauss": state["numpy"]["has_gauss"],
                "gauss": state["numpy"]["gauss"],
            }
        )
        torch.set_rng_state(state["torch"])
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError) as err:
        raise CheckpointError(f"{where}: RNG state is corrupt: {type(err).__name__}: {err}") from err
    if not torch.cuda.is_available():
        return ""
    saved, count = state["cuda"], torch.cuda.device_count()
    for device, generator in enumerate(saved[:count]):
        torch.cuda.set_rng_state(generator, device)
    if len(saved) == count:
        return ""
    return (
        f"{where} holds {len(saved)} CUDA RNG states, this machine has {count} GPUs: restored "
        f"{min(len(saved), count)}, the others keep their seeded state"
    )


def load_weights(model: torch.nn.Module, weights: dict, where: str | Path) -> None:
    """Load a checkpoint's model entry; keys or shapes that do not fit the model are an error naming the file."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise CheckpointError(
            f"checkpoint {where}: its weights do not fit the model its config describes: {' '.join(lines[1:3])[:300]}"
        ) from None


def config_of(state: dict, where: str) -> TrainConfig:
    """Return the TrainConfig stored in a checkpoint (older checkpoints lack newer keys: they get defaults)."""
    try:
        values = yaml.safe_load(state["config"])
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({err})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: not a mapping of TrainConfig keys")
    return from_dict(TrainConfig, values, where)


def model_weights(state: dict, ema: bool = True) -> tuple[dict, str]:
    """Return (state dict, "ema" or "model"): a checkpoint's EMA weights when it has them and `ema`, else
    the trained weights."""
    if ema and isinstance(state.get("ema"), dict):
        return state["ema"]["model"], "ema"
    return state["model"], "model"


@dataclass
class LoadedRun:
    """A model rebuilt from a checkpoint, with what the run knew: config, step, classes, where it came from,
    and which weights were loaded ("model": trained, "ema": their moving average)."""

    model: SegmentationModel
    config: TrainConfig
    step: int
    class_names: list[str]
    ignore_index: int
    target: Target
    weights: str = "model"

    @property
    def run(self) -> RunDir | None:
        """Return the run folder the checkpoint belongs to (None for a loose checkpoint file)."""
        return self.target.run


def load_run(path: str | Path | Target, device: str | torch.device = "cpu", ema: bool = False) -> LoadedRun:
    """Return the model (eval mode, on `device`) and facts of a run folder (its last.pt) or a checkpoint file.

    The plugin modules the run was trained with are imported first, so a decoder or basenet that lives
    outside seglab is rebuilt like a built-in one. With `ema`, a checkpoint's EMA weights are loaded where
    it has them (`LoadedRun.weights` says which). An auxiliary head (training only) is loaded and dropped,
    so that test, predict, bench and export see the inference network alone.
    """
    target = path if isinstance(path, Target) else resolve_target(path)
    state = read_checkpoint(target.checkpoint, device)
    config = config_of(state, str(target.checkpoint))
    for module in config.plugins:
        plugins.import_module(module, f" (named by the config of {target.checkpoint})")
    model = build_model(
        config.basenet,
        config.decoder,
        config.num_classes,
        config.output_stride,
        pretrained=None,
        aux=config.aux_weight > 0,
        **config.decoder_options,
    )
    weights, kind = model_weights(state, ema)
    load_weights(model, weights, target.checkpoint)
    model.drop_aux().to(device).eval()
    return LoadedRun(
        model,
        config,
        int(state["step"]),
        list(state["dataset"]["class_names"]),
        int(state["dataset"]["ignore_index"]),
        target,
        kind,
    )
