"""The study's plan and its state on disk: cells (basenet x decoder x grid point), one run job per cell and seed,
one probe job per basenet, and state.json.

A job is done when its result file exists and was written for the same inputs (the job's spec), so a study
that was interrupted, or whose jobs partly failed, runs again only what is missing: unfinished runs resume
from their last checkpoint, finished runs are evaluated again only when the test or bench settings changed.
state.json records, per job, its status, attempts, last error and log; the coordinator alone writes it.
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seglab import config as cfg_mod
from seglab.config import ProbeConfig, StudyConfig, TrainConfig
from seglab.errors import ConfigError
from seglab.runs import RunDir, atomic_write, read_json

RESULT = "study_result.json"
STATE = "state.json"
# The keys of the study's train and test sections a linear probe reads (others do not change its result): it
# trains on the training dataset's train split and is scored on the test section's split of that dataset.
PROBE_TRAIN_KEYS = (
    "dataset",
    "data_root",
    "dataset_options",
    "train_split",
    "output_stride",
    "crop",
    "scale_range",
    "flip",
    "jitter",
    "pad_mean",
    "workers",
    "device",
)
PROBE_TEST_KEYS = ("split",)


def value_text(value: Any) -> str:
    """Return a grid value as it appears in names and tables: 0.01, 256x256, on/off, a=1,b=2."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "x".join(value_text(v) for v in value) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={value_text(v)}" for k, v in value.items()) or "none"
    return str(value) or "none"


def folder_part(text: str) -> str:
    """Return `text` with every character that does not belong in a folder name replaced by '-'."""
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "-", text)


@dataclass(frozen=True)
class Cell:
    """One cell of the study: a basenet, a decoder and one value per grid key; trained once per seed."""

    basenet: str
    decoder: str
    point: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """Return the cell's folder-safe name, e.g. resnet18_fcn8s_learnrate=0.01."""
        parts = [self.basenet, self.decoder, *(f"{k}={value_text(v)}" for k, v in self.point)]
        return folder_part("_".join(parts))

    @property
    def label(self) -> str:
        """Return the cell as people read it: resnet18 x fcn8s, learnrate 0.01."""
        grid = ", ".join(f"{k} {value_text(v)}" for k, v in self.point)
        return f"{self.basenet} x {self.decoder}" + (f", {grid}" if grid else "")

    @property
    def grid_text(self) -> str:
        """Return the grid point alone ("" without a grid)."""
        return ", ".join(f"{k} {value_text(v)}" for k, v in self.point)

    def train_keys(self) -> dict:
        """Return the TrainConfig keys this cell sets."""
        return {"basenet": self.basenet, "decoder": self.decoder, **dict(self.point)}


@dataclass
class Job:
    """One unit of work a launcher runs: a run (train, test, measure) or a basenet's linear probe."""

    kind: str  # "run" or "probe"
    name: str
    spec: dict  # plain data: everything the job needs, and what its result must have been written for
    result: Path
    cell: Cell | None = None
    seed: int | None = None

    def done(self) -> bool:
        """Return True when the result exists and was written for this spec."""
        if not self.result.is_file():
            return False
        return read_json(self.result, "run the study again").get("spec") == self.spec

    def read_result(self) -> dict:
        """Return the job's result file."""
        return read_json(self.result, "run the study again to redo this job")


def expand_cells(study: StudyConfig, source: str) -> list[Cell]:
    """Return every cell: basenets x decoders x grid points, each grid value normalized by TrainConfig."""
    axes = list(study.grid.items())
    cells, names = [], {}
    for basenet, decoder in itertools.product(study.basenets, study.decoders):
        for values in itertools.product(*(v for _, v in axes)):
            keys = {**study.train, "basenet": basenet, "decoder": decoder, **dict(zip(study.grid, values, strict=True))}
            resolved = cfg_mod.from_dict(TrainConfig, keys, source)  # runs TrainConfig's own checks (crop, ...)
            point = tuple((k, getattr(resolved, k)) for k, _ in axes)
            cell = Cell(basenet, decoder, point)
            if cell.name in names:
                raise ConfigError(
                    f"{source}: grid points {names[cell.name]} and {cell.label} are the same run ({cell.name}); "
                    "list each value once"
                )
            names[cell.name] = cell.label
            cells.append(cell)
    return cells


def probe_key(cell: Cell, train: dict) -> tuple[str, str]:
    """Return what a probe depends on: the basenet and its starting weights."""
    point = dict(cell.point)
    return cell.basenet, str(point.get("pretrained", train.get("pretrained", TrainConfig().pretrained)))


def plan(study: StudyConfig, out: Path, source: str) -> tuple[list[Cell], list[Job]]:
    """Return the cells and the jobs of a study: one run job per (cell, seed), one probe job per basenet."""
    cells = expand_cells(study, source)
    out = out.resolve()  # specs name absolute paths: the same study run from another folder is the same study
    runs_root = out / "runs"
    jobs = []
    for cell in cells:
        for seed in study.seeds:
            run = RunDir(runs_root / f"{cell.name}_seed{seed}")
            spec = {
                "kind": "run",
                "run": str(run.path),
                "train": {
                    **study.train,
                    **cell.train_keys(),
                    "seed": seed,
                    "runs_root": str(runs_root),
                    "plugins": [*study.train.get("plugins", []), *study.plugins],
                },
                "test": dict(study.test),
                "bench": dict(study.bench),
                "last_k": study.last_k,
                "ddp": study.ddp,
                "nproc": study.gpus_per_job,
            }
            jobs.append(Job("run", run.name, spec, run.path / RESULT, cell, seed))
    probe = cfg_mod.from_dict(ProbeConfig, study.probe, f"{source}: probe")
    if probe.steps > 0:
        for basenet, pretrained in dict.fromkeys(probe_key(c, study.train) for c in cells):
            name = folder_part(f"probe_{basenet}_{pretrained}")
            result = out / "probes" / f"{name}.json"
            train = {k: v for k, v in study.train.items() if k in PROBE_TRAIN_KEYS}
            spec = {
                "kind": "probe",
                "basenet": basenet,
                "train": {
                    **train,
                    "pretrained": pretrained,
                    "plugins": [*study.train.get("plugins", []), *study.plugins],
                },
                "test": {k: v for k, v in study.test.items() if k in PROBE_TEST_KEYS},
                "probe": cfg_mod.to_dict(probe),
                "seed": study.seeds[0],
                "result": str(result),
            }
            jobs.append(Job("probe", name, spec, result))
    return cells, jobs


@dataclass
class State:
    """state.json: per job, its status (pending, done, failed), attempts, last error, log and launcher job id."""

    path: Path
    jobs: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> State:
        """Return the state at `path` (empty when the study has not run yet)."""
        data = read_json(path, "delete it to start the study's bookkeeping afresh") if path.is_file() else {}
        return cls(path, dict(data.get("jobs", {})))

    def update(self, name: str, **values) -> None:
        """Set values of one job's entry and write the file."""
        self.jobs.setdefault(name, {"status": "pending", "attempts": 0}).update(values)
        self.save()

    def save(self) -> None:
        """Write state.json atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"updated": datetime.datetime.now().isoformat(timespec="seconds"), "jobs": self.jobs}
        atomic_write(self.path, json.dumps(payload, indent=2) + "\n")
