"""What a run writes while it trains: runlog (for people), metrics.jsonl (for programs), and the experiment
trackers chosen with `--logger`: TensorBoard events (the default), MLflow and Weights & Biases.

Only rank 0 writes (`Monitor(enabled=False)` elsewhere). On resume, metrics.jsonl is cut back to the
checkpoint's step and TensorBoard purges later events, so a resumed run's records equal an
uninterrupted run's. MLflow and W&B runs are continued by the ids kept in the run folder's trackers.json;
they cannot forget logged points, so the steps redone after a resume are logged to MLflow again (same
values) and W&B drops them (it refuses steps below its last one).

MLflow and W&B are optional extras (`pip install 'seglab[mlflow]'`, `'seglab[wandb]'`): asking for one
that is not installed is a one-line error naming the extra. MLflow logs to its tracking URI
(MLFLOW_TRACKING_URI, else MLflow's default) in the experiment MLFLOW_EXPERIMENT_NAME (default "seglab");
W&B to the project WANDB_PROJECT (default "seglab"), offline with WANDB_MODE=offline, its files inside
the run folder. Both get the resolved config as parameters, every scalar of metrics.jsonl, and the
run folder's runargs.yaml, runlog and metrics.jsonl as artifacts when the run ends (checkpoints stay in
the run folder).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
from collections.abc import Iterable

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from seglab.plugins import optional_import
from seglab.runs import RunDir, atomic_write

SCALARS = (
    ("loss", "train/loss"),
    ("lr", "train/lr"),
    ("lr_decoder", "train/lr_decoder"),
    ("grad_norm", "train/grad_norm"),
    ("images_per_s", "train/images_per_s"),
    ("val_miou_partial", "val/miou_partial"),
    ("val_miou", "val/miou"),
    ("val_miou_partial_ema", "val/miou_partial_ema"),
    ("val_miou_ema", "val/miou_ema"),
)
"""metrics.jsonl keys and the tracker tags they are logged under."""
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}
"""Tracker -> the seglab extra that installs it."""


def format_duration(seconds: float) -> str:
    """Return seconds as H:MM:SS."""
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def check_trackers(names: Iterable[str]) -> None:
    """Import the optional trackers among `names` now, so that a missing one stops the run before it starts."""
    for name in names:
        if name in EXTRAS:
            optional_import(name, EXTRAS[name], f"--logger {name}")


def scalars_of(record: dict) -> dict[str, float]:
    """Return the tracker scalars of a metrics.jsonl record: {tag: value}, per-class IoUs included."""
    out = {tag: float(record[key]) for key, tag in SCALARS if record.get(key) is not None}
    for name, value in (record.get("loss_terms") or {}).items():  # a sum of loss terms, or an auxiliary head
        out[f"train/loss_{name}"] = float(value)
    for name, iou in (record.get("val_per_class_iou") or {}).items():
        if iou is not None:
            out[f"val_class_iou/{name}"] = float(iou)
    return out


def read_ids(run: RunDir) -> dict:
    """Return the tracker run ids kept in the run folder (empty for a new run)."""
    return json.loads(run.trackers.read_text()) if run.trackers.is_file() else {}


def write_id(run: RunDir, tracker: str, run_id: str) -> None:
    """Keep a tracker's run id in the run folder, for a resume to continue that run."""
    atomic_write(run.trackers, json.dumps({**read_ids(run), tracker: run_id}, indent=1) + "\n")


def artifact_files(run: RunDir) -> list[str]:
    """Return the run-folder files the trackers receive at the end: runargs.yaml, runlog, metrics.jsonl."""
    return [str(p) for p in (run.runargs, run.runlog, run.metrics) if p.is_file()]


class TensorBoardTracker:
    """TensorBoard event files in the run folder; a resume purges the events after its step."""

    def __init__(self, run: RunDir, params: dict, purge_step: int | None) -> None:
        self.writer = SummaryWriter(log_dir=str(run.path), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def images(self, tag: str, panels: list[torch.Tensor], step: int) -> None:
        for i, panel in enumerate(panels):
            self.writer.add_image(f"{tag}/{i}", panel, step)

    def close(self, status: str) -> None:
        self.writer.close()


class MLflowTracker:
    """An MLflow run per run folder: params once, metrics by step, the run folder's files as artifacts."""

    NAME = re.compile(r"[^\w\-. /:]")  # characters MLflow refuses in metric names

    def __init__(self, run: RunDir, params: dict, purge_step: int | None) -> None:
        mlflow = optional_import("mlflow", "mlflow", "--logger mlflow")
        self.entities = optional_import("mlflow.entities", "mlflow", "--logger mlflow")
        self.run, self.client = run, mlflow.MlflowClient()
        run_id = read_ids(run).get("mlflow")
        if run_id is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "seglab")
            found = self.client.get_experiment_by_name(name)
            experiment = found.experiment_id if found is not None else self.client.create_experiment(name)
            run_id = self.client.create_run(
                experiment, run_name=run.name, tags={"seglab.run_folder": str(run.path.resolve())}
            ).info.run_id
            write_id(run, "mlflow", run_id)
            param = self.entities.Param
            self.client.log_batch(run_id, params=[param(k, json.dumps(v)[:6000]) for k, v in params.items()])
        else:  # params are immutable in MLflow: a resume keeps those of the first start
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def scalars(self, values: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        metric = self.entities.Metric
        self.client.log_batch(
            self.run_id, metrics=[metric(self.NAME.sub("_", tag), value, stamp, step) for tag, value in values.items()]
        )

    def images(self, tag: str, panels: list[torch.Tensor], step: int) -> None:
        """Overlays stay in TensorBoard/W&B: MLflow would store one artifact file per image and step."""

    def close(self, status: str) -> None:
        for path in artifact_files(self.run):
            self.client.log_artifact(self.run_id, path)
        self.client.set_terminated(self.run_id, status=status)


class WandbTracker:
    """A W&B run per run folder (resumed by id), its local files in the run folder's wandb/."""

    def __init__(self, run: RunDir, params: dict, purge_step: int | None) -> None:
        self.wandb = optional_import("wandb", "wandb", "--logger wandb")
        self.run = run
        ids = read_ids(run)
        self.handle = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT", "seglab"),
            name=run.name,
            id=ids.get("wandb"),
            resume="allow",
            config=params,
            dir=str(run.path),
            reinit="finish_previous",
        )
        if "wandb" not in ids:
            write_id(run, "wandb", self.handle.id)

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.handle.log(values, step=step)

    def images(self, tag: str, panels: list[torch.Tensor], step: int) -> None:
        images = {f"{tag}/{i}": self.wandb.Image(panel.permute(1, 2, 0).numpy()) for i, panel in enumerate(panels)}
        self.handle.log(images, step=step)

    def close(self, status: str) -> None:
        artifact = self.wandb.Artifact(f"{self.run.name}-files", type="run-folder")
        for path in artifact_files(self.run):
            artifact.add_file(path)
        self.handle.log_artifact(artifact)
        self.handle.finish(exit_code=0 if status == "FINISHED" else 1)


TRACKER_CLASSES = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}


class Monitor:
    """Writes runlog, metrics.jsonl and the chosen trackers of a run folder (a no-op when disabled)."""

    def __init__(
        self,
        run: RunDir | None,
        enabled: bool,
        purge_step: int | None = None,
        loggers: Iterable[str] = ("tensorboard",),
        params: dict | None = None,
    ) -> None:
        self.run, self.enabled = run, enabled
        self.trackers: list = []
        if not enabled:
            return
        self.runlog = open(run.runlog, "a", buffering=1)  # noqa: SIM115  (open for the run)
        self.metrics = open(run.metrics, "a", buffering=1)  # noqa: SIM115
        self.trackers = [TRACKER_CLASSES[name](run, params or {}, purge_step) for name in loggers]

    def message(self, text: str) -> None:
        """Write a line to runlog and the console (without breaking progress bars)."""
        if self.enabled:
            self.runlog.write(f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}  {text}\n")
            tqdm.write(text)

    def record(self, record: dict, total_steps: int, eta_s: float | None) -> None:
        """Write one step's record to metrics.jsonl, runlog and the trackers."""
        if not self.enabled:
            return
        self.metrics.write(json.dumps(record) + "\n")
        step = record["step"]
        parts = [f"step {step}/{total_steps}", f"epoch {record['epoch']}"]
        if "loss" in record:
            parts += [f"loss {record['loss']:.4f}", f"lr {record['lr']:.3g}", f"{record['images_per_s']:.1f} img/s"]
        if record.get("grad_norm") is not None:
            parts.append(f"grad norm {record['grad_norm']:.3g}")
        for key, label in (
            ("val_miou_partial", "partial-val mIoU"),
            ("val_miou", "val mIoU"),
            ("val_miou_partial_ema", "EMA partial-val mIoU"),
            ("val_miou_ema", "EMA val mIoU"),
        ):
            if record.get(key) is not None:
                parts.append(f"{label} {100 * record[key]:.1f}")
        if eta_s is not None:
            parts.append(f"ETA {format_duration(eta_s)}")
        self.runlog.write(f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}  {'  '.join(parts)}\n")
        values = scalars_of(record)
        for tracker in self.trackers:
            tracker.scalars(values, step)

    def images(self, tag: str, panels: list[torch.Tensor], step: int) -> None:
        """Write image/label/prediction overlays (uint8 [3, H, 3W] each) to the trackers."""
        for tracker in self.trackers:
            tracker.images(tag, panels, step)

    def close(self, status: str = "FINISHED") -> None:
        """Flush and close every file; end the tracker runs with `status` (FINISHED, KILLED or FAILED)."""
        if self.enabled:
            self.runlog.close()
            self.metrics.close()
            for tracker in self.trackers:
                tracker.close(status)
