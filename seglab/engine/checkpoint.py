"""Crash-safe checkpoints: complete state, atomic writes, new-before-old pruning, `weights_only` loading.

Layout of ``<run>/checkpoints/`` (the run store, `seglab.runs`, names the files): ``step_0000100.pt`` files
and ``last.pt``, a hard link to the newest one. A write goes to a temp file in the same directory, is
fsynced and renamed, then the directory is fsynced; only then is ``last.pt`` moved and are older files
pruned, keeping the newest two and every ``--keep`` multiple. A kill at any moment therefore leaves the
previous complete checkpoint in place. Checkpoints hold plain data only (tensors, numbers, strings), so
`torch.load(weights_only=True)` reads them without an allow-list; a file that fails to load is reported by
name and the previous one is used.
"""

from __future__ import annotations

import io
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from seglab import plugins
from seglab.config import TrainConfig, from_dict
from seglab.errors import CheckpointError
from seglab.models import SegmentationModel, build_model
from seglab.runs import (
    LAST,
    Hook,
    RunDir,
    Target,
    atomic_write,
    fsync_dir,
    remove_temp_files,
    resolve_target,
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


def _point_last(ckpt_dir: Path, target: Path) -> None:
    """Make last.pt the same file as `target` (hard link; a copy where links are not supported)."""
    last = ckpt_dir / LAST
    temp = temp_path(last)
    temp.unlink(missing_ok=True)
    try:
        os.link(target, temp)
    except OSError:  # filesystems without hard links: an fsynced copy gives the same guarantee
        shutil.copyfile(target, temp)
        with open(temp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(temp, last)
    fsync_dir(ckpt_dir)


def save_checkpoint(state: dict, ckpt_dir: Path, step: int, keep_every: int, hook: Hook | None = None) -> Path:
    """Write the checkpoint of `step`, point last.pt at it, then prune older ones; return its path.

    Pruning keeps the two newest checkpoints and every step that is a multiple of `keep_every` (> 0).
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = atomic_write(ckpt_dir / step_name(step), buffer.getvalue(), hook)
    _point_last(ckpt_dir, path)
    if hook is not None:
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
        first = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {type(err).__name__}: {first}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a seglab checkpoint")
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
        raise CheckpointError(f"checkpoint {path} has format {state['format']}, this seglab reads {FORMAT}")
    return state


def find_resumable(ckpt_dir: Path, report: Callable[[str], None]) -> tuple[Path, dict]:
    """Return (path, state) of the newest checkpoint that loads; unreadable ones are reported and skipped.

    An incomplete checkpoint (missing entries) is an error, not skipped: it means a bug, not a crash.
    """
    candidates = [p for _, p in step_files(ckpt_dir)]
    if (ckpt_dir / LAST).is_file():
        candidates.append(ckpt_dir / LAST)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {ckpt_dir}")
    for path in candidates:
        try:
            return path, read_checkpoint(path)
        except CheckpointError as err:
            if "cannot be loaded" not in str(err):
                raise
            report(f"{err}; trying the previous checkpoint")
    raise CheckpointError(
        f"none of the checkpoints in {ckpt_dir} can be loaded: {', '.join(p.name for p in candidates)}"
    )


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


def set_rng_state(state: dict, where: str) -> None:
    """Restore RNG states saved by `rng_state`; raise naming any missing or malformed entry."""
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
    if torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise CheckpointError(
                f"{where}: RNG state has {len(state['cuda'])} CUDA generators, this machine "
                f"has {torch.cuda.device_count()} GPUs"
            )
        torch.cuda.set_rng_state_all(state["cuda"])


def config_of(state: dict, where: str) -> TrainConfig:
    """Return the TrainConfig stored in a checkpoint (older checkpoints lack newer keys: they get defaults)."""
    return from_dict(TrainConfig, yaml.safe_load(state["config"]), where)


@dataclass
class LoadedRun:
    """A model rebuilt from a checkpoint, with what the run knew: config, step, classes, where it came from."""

    model: SegmentationModel
    config: TrainConfig
    step: int
    class_names: list[str]
    ignore_index: int
    target: Target

    @property
    def run(self) -> RunDir | None:
        """Return the run folder the checkpoint belongs to (None for a loose checkpoint file)."""
        return self.target.run


def load_run(path: str | Path | Target, device: str | torch.device = "cpu") -> LoadedRun:
    """Return the model (eval mode, on `device`) and facts of a run folder (its last.pt) or a checkpoint file.

    The plugin modules the run was trained with are imported first, so a decoder or basenet that lives
    outside seglab is rebuilt like a built-in one. An auxiliary head (training only) is loaded and dropped,
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
    model.load_state_dict(state["model"])
    model.drop_aux().to(device).eval()
    return LoadedRun(
        model,
        config,
        int(state["step"]),
        list(state["dataset"]["class_names"]),
        int(state["dataset"]["ignore_index"]),
        target,
    )
