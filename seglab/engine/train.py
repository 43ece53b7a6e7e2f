"""`seglab train`: the training loop, readable top to bottom (`train_step`, `train_one_epoch`, `evaluate`,
`train`), with checkpoints, monitoring, sampling and DDP in small modules beside it.

A step is identified by the number of optimizer steps done. After step s: log (every --log-every),
partial-val mIoU (every --eval-every), then the checkpoint (every --ckpt-every, and when stopping).
SIGTERM/SIGINT only set a flag; the loop sees it at the next step boundary (or between eval batches),
saves `last` and exits with 128 + the signal number. Launch with `torchrun` for DDP.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from seglab import config as cfg_mod
from seglab.config import TrainConfig
from seglab.data.base import DatasetError, FileDataset, SegmentationDataset, build_dataset
from seglab.data.check import drop_missing
from seglab.data.io import BadSampleError
from seglab.data.loader import AugmentedDataset, Collate, worker_init
from seglab.data.presets import augment_preset
from seglab.data.transforms import TrainTransform, mean_fill
from seglab.engine import checkpoint, distributed
from seglab.engine.checkpoint import CheckpointError
from seglab.engine.distributed import DistInfo
from seglab.engine.losses import SegmentationLoss
from seglab.engine.monitor import Monitor, overlay, truncate_metrics
from seglab.engine.runs import new_run_dir, write_atomic
from seglab.engine.sampler import ShardSampler, TrainBatchSampler, partial_subset
from seglab.engine.schedule import build_scheduler
from seglab.metrics.confusion import confusion_matrix, segmentation_metrics
from seglab.models import build_model

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
NUM_OVERLAYS = 3


class TrainingError(RuntimeError):
    """A run that cannot start or go on (bad config, refused resume, non-finite loss); says why."""


class StopFlag:
    """Remembers the first SIGTERM/SIGINT; the loop acts on it at step boundaries."""

    def __init__(self) -> None:
        self.signum = 0

    def install(self) -> dict:
        """Route SIGTERM and SIGINT to this flag; return the previous handlers."""
        return {signum: signal.signal(signum, self._handle) for signum in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = self.signum or signum


@dataclass
class Run:
    """The state the loop functions share: config, model, optimization, data and bookkeeping."""

    cfg: TrainConfig
    info: DistInfo
    raw: torch.nn.Module  # the SegmentationModel (unwrapped): normalize, eval, state_dict
    model: torch.nn.Module  # what the training step calls (DDP and/or compiled wrapper of raw)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: SegmentationLoss
    train_set: SegmentationDataset
    val_data: AugmentedDataset
    total: int
    monitor: Monitor
    stop: StopFlag
    ckpt_dir: Path | None
    step: int = 0
    counters: dict = field(default_factory=lambda: {"window_loss": 0.0, "window_steps": 0, "skipped": 0})
    saved_step: int = -1
    started: float = field(default_factory=time.perf_counter)
    start_step: int = 0
    window_start: float = field(default_factory=time.perf_counter)
    progress: tqdm | None = None

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """Return the autocast dtype (None: full precision)."""
        return AMP_DTYPES[self.cfg.amp]

    @property
    def steps_per_epoch(self) -> int:
        """Return the number of steps in an epoch."""
        return len(self.train_set) // self.cfg.batch_size


def train_step(run: Run, batch: dict) -> tuple[float, bool, int]:
    """Do one optimizer step; return (global loss, whether any rank was signalled, samples skipped)."""
    device = run.info.device
    if len(batch["index"]) == 0:
        bad = "; ".join(f"{item['path']}: {item['reason']}" for item in batch["skipped"])
        raise TrainingError(f"step {run.step + 1}: every sample of the batch was skipped ({bad}); "
                            "run `seglab data check` and fix or remove these files")
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    x = run.raw.normalize(images)
    if run.cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        logits = run.model(x)
    loss_sum, norm = run.loss_fn(logits, labels)  # fp32, outside autocast
    # One all-reduce carries the loss, its normalizer, the stop flag and the skipped-sample count.
    totals = torch.stack([loss_sum.detach(), norm, torch.tensor(float(run.stop.signum != 0), device=device),
                          torch.tensor(float(len(batch["skipped"])), device=device)])
    distributed.all_reduce_sum(totals)
    global_norm = totals[1].clamp(min=1.0)
    loss = loss_sum * run.info.world_size / global_norm  # DDP averages gradients over ranks
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    loss_total, norm_total, stop_total, skipped = totals.tolist()
    return loss_total / max(norm_total, 1.0), stop_total > 0, int(skipped)


def train_one_epoch(run: Run, loader: torch.utils.data.DataLoader) -> bool:
    """Train through the rest of the sampler's epoch (or up to the last step); return True when signalled."""
    for batch in loader:
        loss, stopping, skipped = train_step(run, batch)
        run.step += 1
        if not math.isfinite(loss):
            ranks = distributed.gather_objects([run.train_set.sample_id(i) for i in batch["index"].tolist()])
            ids = ", ".join(i for rank_ids in ranks for i in rank_ids)
            raise TrainingError(
                f"step {run.step}: the loss is {loss}; batch samples: {ids}. The run "
                f"stopped; its last good checkpoint is step {run.saved_step}. Lower --learnrate, or try "
                f"--amp bf16/off.")
        for item in batch["skipped"]:
            run.monitor.message(f"step {run.step}: skipped {item['path']}: {item['reason']}")
        run.counters["skipped"] += skipped
        run.counters["window_loss"] += loss
        run.counters["window_steps"] += 1
        if run.progress is not None:
            run.progress.update(1)
            run.progress.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if after_step(run, stopping):
            return True
        if run.step >= run.total:
            return False
    return False


def after_step(run: Run, stopping: bool) -> bool:
    """Log, evaluate and checkpoint as due after a step; return True when the run must stop now."""
    cfg, step = run.cfg, run.step
    final = step >= run.total
    eval_due = cfg.eval_every > 0 and step % cfg.eval_every == 0 and not final and not stopping
    record = None
    if eval_due or final or step % cfg.log_every == 0:
        record = log_record(run)
    if eval_due:
        indices = partial_subset(len(run.val_data), cfg.eval_fraction, cfg.seed, step)
        cm = evaluate_run(run, indices, desc=f"partial val @{step}")
        if cm is None:
            stopping = True
        else:
            record.update(val_record(run, cm, "val_miou_partial"))
            add_overlays(run, indices[:NUM_OVERLAYS])
    if final and not stopping:
        cm = evaluate_run(run, range(len(run.val_data)), desc="val")
        if cm is None:
            stopping = True
        else:
            record.update(val_record(run, cm, "val_miou"))
            add_overlays(run, list(range(min(NUM_OVERLAYS, len(run.val_data)))))
    if record is not None:
        run.monitor.record(record, run.total, eta_s=eta(run))
    if record is not None and "val_miou" in record:
        run.monitor.message(final_summary(record))
    if stopping or final or step % cfg.ckpt_every == 0 or (cfg.keep > 0 and step % cfg.keep == 0):
        save(run)
    return stopping


def log_record(run: Run) -> dict:
    """Return the record of the current step (mean loss since the previous record; epoch: the one the step
    belongs to) and reset the loss window."""
    now = time.perf_counter()
    steps = run.counters["window_steps"]
    record = {"step": run.step, "epoch": (run.step - 1) // run.steps_per_epoch,
              "loss": run.counters["window_loss"] / max(steps, 1), "lr": run.scheduler.get_last_lr()[0],
              "images_per_s": steps * run.cfg.batch_size / max(now - run.window_start, 1e-9),
              "skipped": run.counters["skipped"]}
    run.counters.update(window_loss=0.0, window_steps=0)
    run.window_start = now
    return record


def eta(run: Run) -> float | None:
    """Return the estimated seconds left, from the mean step time of this process."""
    done = run.step - run.start_step
    return None if done == 0 else (time.perf_counter() - run.started) / done * (run.total - run.step)


def val_record(run: Run, cm: Tensor, key: str) -> dict:
    """Return {key: mIoU, "val_per_class_iou": {...}} from a confusion matrix."""
    metrics = segmentation_metrics(cm, run.train_set.classes)
    return {key: metrics["miou"], "val_per_class_iou": metrics["per_class_iou"]}


def final_summary(record: dict) -> str:
    """Return the end-of-run lines: full-val mIoU and the IoU of each class."""
    lines = [f"final val mIoU {100 * record['val_miou']:.2f} at step {record['step']}"]
    for name, iou in record["val_per_class_iou"].items():
        lines.append(f"  {name:<20} {'absent' if iou is None else f'{100 * iou:.2f}'}")
    return "\n".join(lines)


def make_loader(run: Run, dataset: torch.utils.data.Dataset, **kwargs) -> torch.utils.data.DataLoader:
    """Return a DataLoader with seglab's collation; workers ignore SIGTERM/SIGINT, and a private generator
    keeps the loader from drawing on the global torch RNG (which would break exact resume)."""
    workers = run.cfg.workers
    return torch.utils.data.DataLoader(
        dataset, num_workers=workers, collate_fn=Collate(run.train_set.ignore_index),
        pin_memory=run.info.device.type == "cuda", worker_init_fn=worker_init if workers else None,
        generator=torch.Generator(), **kwargs)


def evaluate_run(run: Run, indices: Sequence[int], desc: str) -> Tensor | None:
    """Return the val confusion matrix of `indices` (sharded over ranks); None when a signal cut it short."""
    loader = make_loader(run, run.val_data, batch_size=run.cfg.eval_batch_size,
                         sampler=ShardSampler(indices, run.info.rank, run.info.world_size))
    cm = evaluate(run.raw, loader, run.train_set.ignore_index, run.info.device, run.amp_dtype, run.stop,
                  desc=desc, report=run.monitor.message, show=run.info.is_main)
    set_train_mode(run.raw, run.cfg.freeze_bn)
    return cm


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: Iterable[dict], ignore_index: int, device: torch.device,
             amp_dtype: torch.dtype | None = None, stop: StopFlag | None = None, desc: str = "val",
             report: Callable[[str], None] = print, show: bool = True) -> Tensor | None:
    """Return the int64 confusion matrix of `model` (a SegmentationModel) over `loader`, summed over ranks.

    Returns None on every rank when `stop` was signalled on any rank. Each rank must see a disjoint
    share of the samples (`ShardSampler`), so 1 or w processes give the same matrix.
    """
    num_classes = model.num_classes
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    interrupted = False
    model.eval()
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if show else True):
        if stop is not None and stop.signum:
            interrupted = True
            break
        for item in batch["skipped"]:
            report(f"{desc}: skipped {item['path']}: {item['reason']}")
        if len(batch["index"]) == 0:
            continue
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(model.normalize(images))
        cm += confusion_matrix(logits.argmax(1), labels, num_classes, ignore_index)
    distributed.all_reduce_sum(cm)
    return None if distributed.any_rank(interrupted, device) else cm.cpu()


@torch.inference_mode()
def add_overlays(run: Run, indices: list[int]) -> None:
    """Send image | label | prediction overlays of a few val samples to TensorBoard (rank 0 only)."""
    if not run.info.is_main:
        return
    run.raw.eval()
    panels = []
    for index in indices:
        sample = run.val_data[index]
        if "skipped" in sample:
            continue
        image = sample["image"].to(run.info.device)
        pred = run.raw(run.raw.normalize(image[None])).argmax(1)[0]
        panels.append(overlay(image, sample["label"].to(run.info.device), pred, run.train_set.palette,
                              run.train_set.ignore_index))
    set_train_mode(run.raw, run.cfg.freeze_bn)
    run.monitor.images("val/overlay", panels, run.step)


def set_train_mode(model: torch.nn.Module, freeze_bn: bool) -> None:
    """Put `model` in training mode, BatchNorm layers in eval mode when `freeze_bn`."""
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def save(run: Run) -> None:
    """Write the checkpoint of the current step (rank 0 writes; every rank contributes its RNG state)."""
    if run.saved_step == run.step:
        return
    bad = [name for name, p in run.raw.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingError(f"step {run.step}: parameters {', '.join(bad[:5])} are not finite; not saving. "
                            f"The last good checkpoint is step {run.saved_step}.")
    rngs = distributed.gather_objects(checkpoint.rng_state())
    if run.info.is_main:
        state = {
            "format": checkpoint.FORMAT, "model": run.raw.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "step": run.step,
            "epoch": run.step // run.steps_per_epoch, "position": run.step % run.steps_per_epoch,
            "rng": rngs, "config": cfg_mod.to_yaml(run.cfg), "counters": dict(run.counters),
            "dataset": {"class_names": list(run.train_set.classes), "ignore_index": run.train_set.ignore_index,
                        "num_train": len(run.train_set)},
        }
        checkpoint.save_checkpoint(state, run.ckpt_dir, run.step, run.cfg.keep)
    run.saved_step = run.step


def resolve(cfg: TrainConfig, train_set: SegmentationDataset, device: torch.device) -> TrainConfig:
    """Return `cfg` with dataset-dependent and device-dependent defaults made explicit."""
    if cfg.num_classes and cfg.num_classes != train_set.num_classes:
        raise TrainingError(f"--num-classes {cfg.num_classes} but dataset {cfg.dataset!r} has "
                            f"{train_set.num_classes} classes")
    crop = cfg.crop or list(augment_preset(cfg.dataset).crop)
    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    return dataclasses.replace(cfg, num_classes=train_set.num_classes, amp=amp, crop=crop)


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Return SGD with momentum or AdamW over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.learnrate, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.learnrate, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay)


def load_datasets(cfg: TrainConfig, monitor_lines: list[str]) -> tuple[SegmentationDataset, SegmentationDataset]:
    """Return (train, val) datasets; missing files stop the run, or with --skip-bad-samples are dropped."""
    sets = []
    for split in (cfg.train_split, cfg.val_split):
        dataset = build_dataset(cfg.dataset, cfg.data_root or None, split, **cfg.dataset_options)
        if isinstance(dataset, FileDataset):
            for finding in drop_missing(dataset, skip_bad=cfg.skip_bad_samples):
                monitor_lines.append(f"left out: {finding.message}")
        sets.append(dataset)
    return sets[0], sets[1]


def resume_config(cfg: TrainConfig, explicit: dict) -> tuple[TrainConfig, Path, dict]:
    """Return (config, checkpoint path, state) of the run in --resume; refuse changed settings."""
    ckpt_dir = Path(cfg.resume) / "checkpoints"
    path, state = checkpoint.find_resumable(ckpt_dir, report=lambda text: print(text, file=sys.stderr))
    stored = checkpoint.config_of(state, str(path))
    merged = dataclasses.replace(stored, **explicit)
    changed = cfg_mod.differences(stored, merged, cfg_mod.RESUME_MAY_CHANGE)
    if changed:
        raise TrainingError(f"cannot resume {cfg.resume}: these settings differ from its checkpoint "
                            f"{path.name}:\n  " + "\n  ".join(changed))
    # The run folder comes from --resume itself, whatever `explicit` holds (the stored value is always "").
    return dataclasses.replace(merged, resume=cfg.resume), path, state


def restore(run: Run, state: dict, where: str) -> None:
    """Load model, optimizer, scheduler, scaler, counters and this rank's RNG state from a checkpoint."""
    if state["dataset"]["num_train"] != len(run.train_set):
        raise TrainingError(f"cannot resume from {where}: the training set had {state['dataset']['num_train']} "
                            f"samples, now {len(run.train_set)}")
    if len(state["rng"]) != run.info.world_size:
        raise TrainingError(f"cannot resume from {where}: it was written by {len(state['rng'])} processes, "
                            f"this run has {run.info.world_size}; exact resume needs the same number")
    run.raw.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    run.counters = dict(state["counters"])
    run.step = run.saved_step = run.start_step = state["step"]
    checkpoint.set_rng_state(state["rng"][run.info.rank], where)


def train(cfg: TrainConfig, explicit: dict) -> int:
    """Run (or resume) a training run; return the exit code (128 + signal number when stopped by one)."""
    state, where = None, ""
    if cfg.resume:
        cfg, ckpt_path, state = resume_config(cfg, explicit)
        where = str(ckpt_path)
    info = distributed.init(cfg.device)
    stop = StopFlag()
    previous = stop.install()
    try:
        return _train(cfg, info, state, where, stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        distributed.cleanup()


def build_run(cfg: TrainConfig, info: DistInfo, state: dict | None, where: str,
              stop: StopFlag) -> tuple[Run, torch.utils.data.DataLoader, TrainBatchSampler]:
    """Return the run (model, optimization, run folder; restored from `state` when resuming), its training
    loader and the loader's batch sampler."""
    cfg = dataclasses.replace(cfg, dataset=cfg.dataset or ("voc" if cfg.data_root else "synthetic"))
    notes: list[str] = []
    train_set, val_set = load_datasets(cfg, notes)
    resolved = resolve(cfg, train_set, info.device)
    if state is not None:
        changed = cfg_mod.differences(checkpoint.config_of(state, where), resolved, cfg_mod.RESUME_MAY_CHANGE)
        if changed:
            raise TrainingError(f"cannot resume from {where}: " + "; ".join(changed))
    cfg = resolved

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    pretrained = None if state is not None or cfg.pretrained in ("", "none") else cfg.pretrained
    raw = build_model(cfg.basenet, cfg.decoder, cfg.num_classes, cfg.output_stride, pretrained,
                      **cfg.decoder_options).to(info.device)
    if cfg.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    if info.distributed and cfg.sync_bn and info.device.type == "cuda":
        raw = torch.nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    set_train_mode(raw, cfg.freeze_bn)
    sampler = TrainBatchSampler(len(train_set), cfg.batch_size, cfg.seed, info.rank, info.world_size)
    total = cfg.iters or cfg.epochs * sampler.steps_per_epoch
    optimizer = build_optimizer(cfg, raw)
    run_dir = Path(cfg.resume) if state is not None else None
    cfg = dataclasses.replace(cfg, resume="")  # runargs.yaml must start a new run when re-run with --config
    if info.is_main and run_dir is None:
        run_dir = new_run_dir(cfg.runs_root, cfg.basenet, cfg.decoder, cfg.run_name)
    if info.is_main:
        print(f"run folder: {run_dir}", flush=True)
        write_atomic(run_dir / "runargs.yaml", cfg_mod.to_yaml(cfg))
    if info.is_main and state is not None:
        truncate_metrics(run_dir / "metrics.jsonl", state["step"])
        checkpoint.remove_temp_files(run_dir / "checkpoints")
    augment = dataclasses.replace(augment_preset(cfg.dataset), crop=tuple(cfg.crop),
                                  scale_range=tuple(cfg.scale_range), flip=cfg.flip, jitter=cfg.jitter,
                                  pad_mean=cfg.pad_mean)
    run = Run(
        cfg=cfg, info=info, raw=raw, model=raw, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.decaylr, total, cfg.warmup),
        scaler=torch.amp.GradScaler(info.device.type, enabled=cfg.amp == "fp16"),
        loss_fn=SegmentationLoss(cfg.num_classes, train_set.ignore_index, cfg.class_weights, cfg.loss == "ohem",
                                 cfg.ohem_thresh, cfg.ohem_min_kept).to(info.device),
        train_set=train_set,
        val_data=AugmentedDataset(val_set, None, cfg.seed, skip_bad=cfg.skip_bad_samples),
        total=total, stop=stop, ckpt_dir=run_dir / "checkpoints" if run_dir else None,
        monitor=Monitor(run_dir, info.is_main, purge_step=state["step"] + 1 if state else None),
    )
    if state is not None:
        restore(run, state, where)
        run.monitor.message(f"resumed from {where} at step {run.step}")
    for note in notes:
        run.monitor.message(note)
    model = raw
    if info.distributed:
        model = DistributedDataParallel(raw, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    run.model = torch.compile(model) if cfg.compile else model
    train_data = AugmentedDataset(train_set, TrainTransform(augment, train_set.ignore_index,
                                                            mean_fill(raw.input_mean)),
                                  cfg.seed, skip_bad=cfg.skip_bad_samples)
    loader = make_loader(run, train_data, batch_sampler=sampler, persistent_workers=cfg.workers > 0)
    run.monitor.message(f"{train_set.describe()}; {total} steps of {cfg.batch_size} images "
                        f"({sampler.steps_per_epoch} per epoch) on {info.world_size} x {info.device}")
    return run, loader, sampler


def _train(cfg: TrainConfig, info: DistInfo, state: dict | None, where: str, stop: StopFlag) -> int:
    run, loader, sampler = build_run(cfg, info, state, where, stop)
    total = run.total
    stopped = distributed.any_rank(stop.signum != 0, info.device)
    run.progress = tqdm(total=total, initial=run.step, desc="train", dynamic_ncols=True,
                        disable=None if info.is_main else True)
    try:
        while not stopped and run.step < total:
            sampler.set_position(run.step // sampler.steps_per_epoch, run.step % sampler.steps_per_epoch)
            stopped = train_one_epoch(run, loader)
        save(run)
        if stopped and run.step < total:
            name = signal.Signals(stop.signum).name if stop.signum else "a signal to another rank"
            run.monitor.message(f"stopped by {name} at step {run.step}; checkpoint saved; continue with: "
                                f"seglab train --resume {run.monitor.run_dir}")
            return 128 + (stop.signum or signal.SIGTERM)
        run.monitor.message(f"finished {total} steps; checkpoint {run.ckpt_dir}/last.pt")
        return 0
    except TrainingError as err:
        run.monitor.message(str(err))
        raise
    finally:
        run.progress.close()
        run.monitor.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `seglab train` flags: `--config FILE` and one flag per TrainConfig field."""
    cfg_mod.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Entry point of `seglab train`."""
    try:
        return train(cfg_mod.from_args(args), cfg_mod.explicit_flags(args))
    except (TrainingError, CheckpointError, DatasetError, BadSampleError, ValueError, FileNotFoundError) as err:
        print(f"seglab train: error: {err}", file=sys.stderr)
        return 1
