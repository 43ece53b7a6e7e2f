"""What a run writes while it trains: runlog (for people), metrics.jsonl (for programs), TensorBoard events.

Only rank 0 writes (`Monitor(enabled=False)` elsewhere). On resume, metrics.jsonl is cut back to the
checkpoint's step and TensorBoard purges later events, so a resumed run's records equal an
uninterrupted run's.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


def truncate_metrics(path: Path, last_step: int) -> int:
    """Drop the records of metrics.jsonl after `last_step` (atomically); return how many were dropped.

    A torn last line (the writer killed mid-line) is dropped too; a bad line elsewhere is an error.
    """
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON record: {err}") from err
        if record["step"] <= last_step:
            kept.append(line)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_text("".join(line + "\n" for line in kept))
    os.replace(temp, path)
    return len(lines) - len(kept)


def format_duration(seconds: float) -> str:
    """Return seconds as H:MM:SS."""
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def overlay(image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, palette: np.ndarray,
            ignore_index: int) -> torch.Tensor:
    """Return uint8 [3, H, 3W]: the image, its label and the prediction (colours blended over the image)."""
    colours = torch.from_numpy(np.asarray(palette, dtype=np.uint8)).to(image.device)

    def paint(classes: torch.Tensor) -> torch.Tensor:
        valid = classes != ignore_index
        coloured = colours[classes.long().clamp(max=len(colours) - 1)].permute(2, 0, 1).float()
        blended = 0.4 * image.float() + 0.6 * coloured
        return torch.where(valid, blended, image.float()).to(torch.uint8)

    return torch.cat([image, paint(label), paint(pred)], dim=2).cpu()


class Monitor:
    """Writes runlog, metrics.jsonl and TensorBoard events of a run folder (a no-op when disabled)."""

    def __init__(self, run_dir: Path, enabled: bool, purge_step: int | None = None) -> None:
        self.run_dir, self.enabled = run_dir, enabled
        if not enabled:
            return
        self.runlog = open(run_dir / "runlog", "a", buffering=1)  # noqa: SIM115  (open for the run)
        self.metrics = open(run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)

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
            parts += [f"loss {record['loss']:.4f}", f"lr {record['lr']:.3g}",
                      f"{record['images_per_s']:.1f} img/s"]
        for key, label in (("val_miou_partial", "partial-val mIoU"), ("val_miou", "val mIoU")):
            if record.get(key) is not None:
                parts.append(f"{label} {100 * record[key]:.1f}")
        if eta_s is not None:
            parts.append(f"ETA {format_duration(eta_s)}")
        self.runlog.write(f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}  {'  '.join(parts)}\n")
        for key, tag in (("loss", "train/loss"), ("lr", "train/lr"), ("images_per_s", "train/images_per_s"),
                         ("val_miou_partial", "val/miou_partial"), ("val_miou", "val/miou")):
            if record.get(key) is not None:
                self.writer.add_scalar(tag, record[key], step)
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
