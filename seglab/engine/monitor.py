"""What a run writes while it trains: runlog (for people), metrics.jsonl (for programs), TensorBoard events.

Only rank 0 writes (`Monitor(enabled=False)` elsewhere). On resume, metrics.jsonl is cut back to the
checkpoint's step and TensorBoard purges later events, so a resumed run's records equal an
uninterrupted run's.
"""

from __future__ import annotations

import datetime
import json

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from seglab.runs import RunDir


def format_duration(seconds: float) -> str:
    """Return seconds as H:MM:SS."""
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


class Monitor:
    """Writes runlog, metrics.jsonl and TensorBoard events of a run folder (a no-op when disabled)."""

    def __init__(self, run: RunDir | None, enabled: bool, purge_step: int | None = None) -> None:
        self.run, self.enabled = run, enabled
        if not enabled:
            return
        self.runlog = open(run.runlog, "a", buffering=1)  # noqa: SIM115  (open for the run)
        self.metrics = open(run.metrics, "a", buffering=1)  # noqa: SIM115
        self.writer = SummaryWriter(log_dir=str(run.path), purge_step=purge_step)

    def message(self, text: str) -> None:
        """Write a line to runlog and the console (without breaking progress bars)."""
        if self.enabled:
            self.runlog.write(f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}  {text}\n")
            tqdm.write(text)

    def record(self, record: dict, total_steps: int, eta_s: float | None) -> None:
        """Write one step's record to metrics.jsonl, runlog and TensorBoard."""
        if not self.enabled:
            return
        self.metrics.write(json.dumps(record) + "\n")
        step = record["step"]
        parts = [f"step {step}/{total_steps}", f"epoch {record['epoch']}"]
        if "loss" in record:
            parts += [f"loss {record['loss']:.4f}", f"lr {record['lr']:.3g}", f"{record['images_per_s']:.1f} img/s"]
        for key, label in (("val_miou_partial", "partial-val mIoU"), ("val_miou", "val mIoU")):
            if record.get(key) is not None:
                parts.append(f"{label} {100 * record[key]:.1f}")
        if eta_s is not None:
            parts.append(f"ETA {format_duration(eta_s)}")
        self.runlog.write(f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}  {'  '.join(parts)}\n")
        for key, tag in (
            ("loss", "train/loss"),
            ("lr", "train/lr"),
            ("images_per_s", "train/images_per_s"),
            ("val_miou_partial", "val/miou_partial"),
            ("val_miou", "val/miou"),
        ):
            if record.get(key) is not None:
                self.writer.add_scalar(tag, record[key], step)
        for name, value in (record.get("loss_terms") or {}).items():
            self.writer.add_scalar(f"train/loss_{name}", value, step)
        for name, iou in (record.get("val_per_class_iou") or {}).items():
            if iou is not None:
                self.writer.add_scalar(f"val_class_iou/{name}", iou, step)

    def images(self, tag: str, panels: list[torch.Tensor], step: int) -> None:
        """Write image/label/prediction overlays (uint8 [3, H, 3W] each) to TensorBoard."""
        if self.enabled:
            for i, panel in enumerate(panels):
                self.writer.add_image(f"{tag}/{i}", panel, step)

    def close(self) -> None:
        """Flush and close every file."""
        if self.enabled:
            self.writer.close()
            self.runlog.close()
            self.metrics.close()
