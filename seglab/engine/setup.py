"""Building a training run in named steps: resume point, data, config resolution, network, optimization,
run folder, restore. `build_run` calls them in that order; `seglab.engine.train` runs the result.

A run's state is split by concern (`Network`, `Optimization`, `Data`, `Progress`), so that each loop function
takes the parts it uses; `Run` only bundles them with the config, the process's place in DDP, the monitor
and the stop flag.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from seglab import config as cfg_mod
from seglab.config import RESUME_MAY_CHANGE, TrainConfig
from seglab.data.base import FileDataset, SegmentationDataset, build_dataset
from seglab.data.check import drop_missing
from seglab.data.loader import AugmentedDataset, Collate, worker_init
from seglab.data.presets import augment_preset
from seglab.data.transforms import TrainTransform, mean_fill
from seglab.engine import checkpoint
from seglab.engine.distributed import DistInfo
from seglab.engine.losses import Objective, build_objective
from seglab.engine.monitor import Monitor
from seglab.engine.sampler import TrainBatchSampler
from seglab.engine.schedule import build_scheduler
from seglab.engine.signals import StopFlag
from seglab.errors import TrainingError
from seglab.models import SegmentationModel, build_model
from seglab.plugins import load_plugins
from seglab.runs import RunDir, atomic_write, new_run, open_run, remove_temp_files, truncate_metrics

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


@dataclass
class Resume:
    """Where a resumed run continues: its folder, the checkpoint chosen and that checkpoint's state."""

    run: RunDir
    path: Path
    state: dict

    @property
    def stored(self) -> TrainConfig:
        """Return the config the checkpoint was written with."""
        return checkpoint.config_of(self.state, str(self.path))


@dataclass
class Network:
    """The model: `raw` (normalize, eval, state_dict) and `model`, what the training step calls (raw wrapped
    in DDP and/or torch.compile); with `channels_last` inputs are laid out to match."""

    raw: SegmentationModel
    model: torch.nn.Module
    channels_last: bool = False


@dataclass
class Optimization:
    """Optimizer, per-step LR scheduler, AMP gradient scaler, loss (its terms) and the autocast dtype (None: fp32)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: Objective
    amp_dtype: torch.dtype | None


@dataclass
class Data:
    """The training set, its loader and batch sampler, and the validation set (decoded, not augmented)."""

    train_set: SegmentationDataset
    val_data: AugmentedDataset
    loader: torch.utils.data.DataLoader
    sampler: TrainBatchSampler


@dataclass
class Progress:
    """What changes step by step: the step, the last saved step, counters, timing and the progress bar."""

    step: int = 0
    saved_step: int = -1
    start_step: int = 0
    counters: dict = field(default_factory=lambda: {"window_loss": 0.0, "window_steps": 0, "skipped": 0})
    started: float = field(default_factory=time.perf_counter)
    window_start: float = field(default_factory=time.perf_counter)
    bar: tqdm | None = None


@dataclass
class Run:
    """One training run: its resolved config and the parts the loop functions take."""

    cfg: TrainConfig
    info: DistInfo
    net: Network
    opt: Optimization
    data: Data
    folder: RunDir | None  # None on ranks other than 0, which write nothing
    monitor: Monitor
    stop: StopFlag
    total: int
    progress: Progress = field(default_factory=Progress)

    @property
    def steps_per_epoch(self) -> int:
        """Return the number of steps in an epoch."""
        return self.data.sampler.steps_per_epoch


def explicit_keys(cfg: TrainConfig) -> dict:
    """Return the keys of `cfg` that differ from the defaults (what a caller set, for a resume to keep)."""
    defaults = cfg_mod.to_dict(TrainConfig())
    return {k: v for k, v in cfg_mod.to_dict(cfg).items() if v != defaults[k]}


def find_resume(cfg: TrainConfig) -> Resume | None:
    """Return the checkpoint a `--resume RUN_DIR` continues from (None when not resuming)."""
    if not cfg.resume:
        return None
    run = open_run(cfg.resume)
    path, state = checkpoint.find_resumable(run.checkpoints, report=lambda text: print(text, file=sys.stderr))
    return Resume(run, path, state)


def load_data(cfg: TrainConfig, notes: list[str]) -> tuple[SegmentationDataset, SegmentationDataset]:
    """Return (train, val) datasets; missing files stop the run, or with --skip-bad-samples are dropped."""
    sets = []
    for split in (cfg.train_split, cfg.val_split):
        dataset = build_dataset(cfg.dataset, cfg.data_root or None, split, **cfg.dataset_options)
        if isinstance(dataset, FileDataset):
            for finding in drop_missing(dataset, skip_bad=cfg.skip_bad_samples):
                notes.append(f"left out: {finding.message}")
        sets.append(dataset)
    return sets[0], sets[1]


def resolve(cfg: TrainConfig, train_set: SegmentationDataset, device: torch.device) -> TrainConfig:
    """Return `cfg` with dataset-dependent and device-dependent defaults made explicit."""
    if cfg.num_classes and cfg.num_classes != train_set.num_classes:
        raise TrainingError(
            f"--num-classes {cfg.num_classes} but dataset {cfg.dataset!r} has {train_set.num_classes} classes"
        )
    crop = cfg.crop or list(augment_preset(cfg.dataset).crop)
    amp = cfg.amp
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    return dataclasses.replace(cfg, num_classes=train_set.num_classes, amp=amp, crop=crop)


def check_resume(resume: Resume, resolved: TrainConfig) -> None:
    """The one resume check: refuse any setting that differs from the checkpoint's config, except the keys
    a resumed run may change (intervals, workers, paths, device, compile, plugins)."""
    changed = cfg_mod.differences(resume.stored, resolved, RESUME_MAY_CHANGE)
    if changed:
        raise TrainingError(
            f"cannot resume {resume.run.path}: these settings differ from its checkpoint "
            f"{resume.path.name}: " + "; ".join(changed)
        )


def set_train_mode(model: torch.nn.Module, freeze_bn: bool) -> None:
    """Put `model` in training mode, BatchNorm layers in eval mode when `freeze_bn`."""
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def build_network(cfg: TrainConfig, info: DistInfo, restoring: bool) -> SegmentationModel:
    """Return the model on the run's device, seeded; ImageNet weights in the basenet unless restoring."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    pretrained = None if restoring or cfg.pretrained in ("", "none") else cfg.pretrained
    raw = build_model(
        cfg.basenet,
        cfg.decoder,
        cfg.num_classes,
        cfg.output_stride,
        pretrained,
        aux=cfg.aux_weight > 0,
        **cfg.decoder_options,
    ).to(info.device)
    if cfg.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    if info.distributed and cfg.sync_bn and info.device.type == "cuda":
        raw = torch.nn.SyncBatchNorm.convert_sync_batchnorm(raw)
    set_train_mode(raw, cfg.freeze_bn)
    return raw


def wrap(cfg: TrainConfig, info: DistInfo, raw: SegmentationModel) -> torch.nn.Module:
    """Return what the training step calls: `raw` in DDP under torchrun, compiled with --compile."""
    model: torch.nn.Module = raw
    if info.distributed:
        model = DistributedDataParallel(raw, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    return torch.compile(model) if cfg.compile else model


def build_optimization(
    cfg: TrainConfig, raw: SegmentationModel, total: int, info: DistInfo, ignore_index: int
) -> Optimization:
    """Return SGD with momentum or AdamW over the trainable parameters, the schedule, scaler and loss."""
    params = [p for p in raw.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.learnrate, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(
            params, lr=cfg.learnrate, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay
        )
    loss_fn = build_objective(
        cfg.loss,
        cfg.num_classes,
        ignore_index,
        cfg.class_weights,
        cfg.ohem_thresh,
        cfg.ohem_min_kept,
        cfg.focal_gamma,
        cfg.aux_weight,
    ).to(info.device)
    return Optimization(
        optimizer,
        build_scheduler(optimizer, cfg.decaylr, total, cfg.warmup),
        torch.amp.GradScaler(info.device.type, enabled=cfg.amp == "fp16"),
        loss_fn,
        AMP_DTYPES[cfg.amp],
    )


def make_loader(
    cfg: TrainConfig, info: DistInfo, dataset: torch.utils.data.Dataset, ignore_index: int, **kwargs
) -> torch.utils.data.DataLoader:
    """Return a DataLoader with seglab's collation; workers ignore SIGTERM/SIGINT, and a private generator
    keeps the loader from drawing on the global torch RNG (which would break exact resume)."""
    return torch.utils.data.DataLoader(
        dataset,
        num_workers=cfg.workers,
        collate_fn=Collate(ignore_index),
        pin_memory=info.device.type == "cuda",
        worker_init_fn=worker_init if cfg.workers else None,
        generator=torch.Generator(),
        **kwargs,
    )


def build_data(
    cfg: TrainConfig,
    info: DistInfo,
    train_set: SegmentationDataset,
    val_set: SegmentationDataset,
    raw: SegmentationModel,
) -> Data:
    """Return the augmented training loader (batches keyed by (epoch, index)) and the validation set."""
    augment = dataclasses.replace(
        augment_preset(cfg.dataset),
        crop=tuple(cfg.crop),
        scale_range=tuple(cfg.scale_range),
        flip=cfg.flip,
        jitter=cfg.jitter,
        pad_mean=cfg.pad_mean,
    )
    transform = TrainTransform(augment, train_set.ignore_index, mean_fill(raw.input_mean))
    train_data = AugmentedDataset(train_set, transform, cfg.seed, skip_bad=cfg.skip_bad_samples)
    sampler = TrainBatchSampler(len(train_set), cfg.batch_size, cfg.seed, info.rank, info.world_size)
    loader = make_loader(
        cfg, info, train_data, train_set.ignore_index, batch_sampler=sampler, persistent_workers=cfg.workers > 0
    )
    val_data = AugmentedDataset(val_set, None, cfg.seed, skip_bad=cfg.skip_bad_samples)
    return Data(train_set, val_data, loader, sampler)


def open_run_folder(cfg: TrainConfig, info: DistInfo, resume: Resume | None) -> RunDir | None:
    """Return the run folder (rank 0 only): the resumed one, cut back to its checkpoint, or a new one; write
    runargs.yaml."""
    if not info.is_main:
        return None
    folder = resume.run if resume is not None else new_run(cfg.runs_root, cfg.basenet, cfg.decoder, cfg.run_name)
    print(f"run folder: {folder.path}", flush=True)
    atomic_write(folder.runargs, cfg_mod.to_yaml(cfg))
    if resume is not None:
        truncate_metrics(folder.metrics, resume.state["step"])
        remove_temp_files(folder.checkpoints)
    return folder


def restore(run: Run, resume: Resume) -> None:
    """Load model, optimizer, scheduler, scaler, counters and this rank's RNG state from a checkpoint."""
    state, where = resume.state, str(resume.path)
    if state["dataset"]["num_train"] != len(run.data.train_set):
        raise TrainingError(
            f"cannot resume from {where}: the training set had {state['dataset']['num_train']} "
            f"samples, now {len(run.data.train_set)}"
        )
    if len(state["rng"]) != run.info.world_size:
        raise TrainingError(
            f"cannot resume from {where}: it was written by {len(state['rng'])} processes, "
            f"this run has {run.info.world_size}; exact resume needs the same number"
        )
    run.net.raw.load_state_dict(state["model"])
    run.opt.optimizer.load_state_dict(state["optimizer"])
    run.opt.scheduler.load_state_dict(state["scheduler"])
    run.opt.scaler.load_state_dict(state["scaler"])
    run.progress.counters = dict(state["counters"])
    run.progress.step = run.progress.saved_step = run.progress.start_step = state["step"]
    checkpoint.set_rng_state(state["rng"][run.info.rank], where)


def build_run(cfg: TrainConfig, explicit: dict, info: DistInfo, resume: Resume | None, stop: StopFlag) -> Run:
    """Return the run, built step by step (restored from `resume` when continuing one)."""
    if resume is not None:  # the checkpoint's config, with what the command line set on top
        cfg = dataclasses.replace(resume.stored, **{**explicit, "resume": str(resume.run.path)})
    cfg = dataclasses.replace(
        cfg, dataset=cfg.dataset or ("voc" if cfg.data_root else "synthetic"), plugins=load_plugins(cfg.plugins)
    )
    notes: list[str] = []
    train_set, val_set = load_data(cfg, notes)
    cfg = resolve(cfg, train_set, info.device)
    if resume is not None:
        check_resume(resume, cfg)
    # runargs.yaml and checkpoints hold no `resume`, so that `--config runargs.yaml` starts a new run.
    cfg = dataclasses.replace(cfg, resume="")
    raw = build_network(cfg, info, restoring=resume is not None)
    data = build_data(cfg, info, train_set, val_set, raw)
    total = cfg.iters or cfg.epochs * data.sampler.steps_per_epoch
    opt = build_optimization(cfg, raw, total, info, train_set.ignore_index)
    folder = open_run_folder(cfg, info, resume)
    monitor = Monitor(folder, info.is_main, purge_step=resume.state["step"] + 1 if resume else None)
    run = Run(cfg, info, Network(raw, raw, cfg.channels_last), opt, data, folder, monitor, stop, total)
    if resume is not None:
        restore(run, resume)
        monitor.message(f"resumed from {resume.path} at step {run.progress.step}")
    for note in notes:
        monitor.message(note)
    run.net.model = wrap(cfg, info, raw)
    monitor.message(
        f"{train_set.describe()}; {total} steps of {cfg.batch_size} images "
        f"({data.sampler.steps_per_epoch} per epoch) on {info.world_size} x {info.device}"
    )
    return run
