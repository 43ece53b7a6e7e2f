"""Building a training run in named steps: resume point, fine-tuning source, data, config resolution, checks,
network (initialized from the source), optimization (parameter groups), EMA, run folder, restore (and
extension), freezing. `build_run` calls them in that order; `seglab.engine.train` runs the result.

Everything that can refuse a run (a setting, the data, the resume) is checked before `open_run_folder`, so a
refused run leaves nothing behind; the run folder is then locked for this trainer before anything in it
changes (a resumed run's unloadable checkpoints are set aside only then).

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
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from seglab import config as cfg_mod
from seglab.config import RESUME_MAY_CHANGE, RESUME_MAY_EXTEND, TrainConfig
from seglab.data.base import FileDataset, SegmentationDataset, build_dataset
from seglab.data.check import drop_missing, load_label
from seglab.data.loader import AugmentedDataset, Collate, worker_init
from seglab.data.presets import augment_preset
from seglab.data.transforms import TrainTransform, mean_fill
from seglab.engine import checkpoint
from seglab.engine.distributed import DistInfo
from seglab.engine.finetune import Source, check_source, inherit, read_source, transfer_weights
from seglab.engine.inference import model_stride
from seglab.engine.losses import Objective, build_objective
from seglab.engine.monitor import Monitor, check_trackers
from seglab.engine.sampler import TrainBatchSampler
from seglab.engine.schedule import build_scheduler, extend_schedule
from seglab.engine.signals import StopFlag
from seglab.errors import BadSampleError, ConfigError, TrainingError
from seglab.models import SegmentationModel, build_model
from seglab.plugins import load_plugins
from seglab.runs import (
    RunDir,
    RunLock,
    atomic_write,
    lock_run,
    new_run,
    open_run,
    remove_temp_files,
    truncate_metrics,
)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
LABEL_SCAN = 64
"""At most this many training labels are read before a run to refuse labels holding only 0 and the ignore index."""
COUNTERS = {"window_loss": 0.0, "window_steps": 0, "skipped": 0, "window_grad_norm": 0.0, "window_clipped": 0}
"""Counters kept in checkpoints: the loss (and gradient-norm) window since the last record, skipped samples."""


@dataclass
class Resume:
    """Where a resumed run continues: its folder, the checkpoint chosen and that checkpoint's state."""

    run: RunDir
    path: Path
    state: dict
    unloadable: list[Path] = field(default_factory=list)  # newer checkpoints that did not load

    @property
    def stored(self) -> TrainConfig:
        """Return the config the checkpoint was written with."""
        return checkpoint.config_of(self.state, str(self.path))


@dataclass
class Network:
    """The model: `raw` (normalize, eval, state_dict) and `model`, what the training step calls (raw wrapped
    in DDP and/or torch.compile); with `channels_last` inputs are laid out to match. `ema` holds the moving
    average of raw's weights and buffers (`--ema`), updated after every optimizer step."""

    raw: SegmentationModel
    model: torch.nn.Module
    channels_last: bool = False
    ema: AveragedModel | None = None


@dataclass
class Optimization:
    """Optimizer, per-step LR scheduler, AMP gradient scaler, loss (its terms), the autocast dtype (None:
    fp32), the forward/backward passes per step (`--accumulate`) and the gradient-norm clip (0: off)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: Objective
    amp_dtype: torch.dtype | None
    accumulate: int = 1
    clip_grad: float = 0.0


@dataclass
class Data:
    """The training set, its loader and batch sampler, and the validation set (decoded, not augmented)."""

    train_set: SegmentationDataset
    val_data: AugmentedDataset
    loader: torch.utils.data.DataLoader
    sampler: TrainBatchSampler


@dataclass
class Progress:
    """What changes step by step: the step, the last saved step, counters, the best full-val score so far
    ({"step", "miou"}, with --keep-best), timing and the progress bar."""

    step: int = 0
    saved_step: int = -1
    start_step: int = 0
    counters: dict = field(default_factory=lambda: dict(COUNTERS))
    best: dict | None = None
    # the evaluation a signal cut short at this step ({"eval": "partial" | "final", "record": the step's
    # record}); a resume runs it before training on, so that no evaluation is lost or logged twice
    pending: dict = field(default_factory=dict)
    resave: bool = False  # the checkpoint at `saved_step` lacks settings this resume changed: write it again
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
    lock: RunLock | None = None  # rank 0's claim on the run folder, released when the loop ends

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
    found = checkpoint.find_resumable(run.checkpoints, report=lambda text: print(text, file=sys.stderr))
    return Resume(run, found.path, found.state, found.unloadable)


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
    return dataclasses.replace(cfg, num_classes=train_set.num_classes, amp=resolve_amp(cfg.amp, device), crop=crop)


def resolve_amp(amp: str, device: torch.device) -> str:
    """Return --amp with auto made explicit: bf16 on a CUDA device that supports it, else off."""
    if amp == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"
    return amp


def check_resume(resume: Resume, resolved: TrainConfig) -> None:
    """The one resume check: refuse any setting that differs from the checkpoint's config, except the keys
    a resumed run may change (intervals, workers, paths, device, compile, plugins) and the length of the
    run, which `extend` checks."""
    changed = cfg_mod.differences(resume.stored, resolved, RESUME_MAY_CHANGE | RESUME_MAY_EXTEND)
    if changed:
        raise TrainingError(
            f"cannot resume {resume.run.path}: these settings differ from its checkpoint "
            f"{resume.path.name}: " + "; ".join(changed)
        )


def check_resume_fits(resume: Resume, train_set: SegmentationDataset, info: DistInfo) -> None:
    """Refuse a resume whose training set or process count differs from the checkpoint's (the data order
    and the per-rank RNG states would not continue exactly)."""
    state, where = resume.state, str(resume.path)
    if state["dataset"]["num_train"] != len(train_set):
        raise TrainingError(
            f"cannot resume from {where}: the training set had {state['dataset']['num_train']} "
            f"samples, now {len(train_set)}"
        )
    if len(state["rng"]) != info.world_size:
        raise TrainingError(
            f"cannot resume from {where}: it was written by {len(state['rng'])} processes, "
            f"this run has {info.world_size}; exact resume needs the same number"
        )


def check_runargs(resume: Resume, explicit: dict) -> None:
    """Refuse a resume when runargs.yaml was edited: a resume takes its settings from the checkpoint and the
    flags given, so the edit would be silently overwritten; say how to apply a change with flags instead."""
    runargs = resume.run.runargs
    written = cfg_mod.to_dict(cfg_mod.from_dict(TrainConfig, resume.run.read_runargs(), str(runargs)))
    stored = cfg_mod.to_dict(resume.stored)
    edited = [k for k in stored if k not in explicit and k != "resume" and written[k] != stored[k]]
    if not edited:
        return
    listed = "; ".join(f"{k}: {stored[k]!r} in the checkpoint, {written[k]!r} in runargs.yaml" for k in edited)
    may = [k for k in edited if k in RESUME_MAY_CHANGE]
    fixed = [k for k in edited if k not in RESUME_MAY_CHANGE]
    hints = []
    if may:
        flags = " ".join(cfg_mod.as_flags(k, written[k]) for k in may)
        hints.append(f"to apply the change, pass it as flags: seglab train --resume {resume.run.path} {flags}")
    if fixed:
        hints.append(
            f"{', '.join(fixed)} cannot change on resume: start a new run with "
            f"`seglab train --config {runargs} --run-name NEW_NAME`"
        )
    raise TrainingError(
        f"cannot resume {resume.run.path}: its {runargs.name} was edited, but a resume takes its settings from "
        f"the checkpoint {resume.path.name} and the flags given, and would overwrite the edit ({listed}); "
        f"{'; '.join(hints)}; or restore {runargs.name}"
    )


def check_labels(cfg: TrainConfig, train_set: SegmentationDataset) -> None:
    """Refuse training labels that hold only 0 and the ignore index (the foreground of a binary mask saved
    as 0/255 would be ignored, not learned), unless --allow-ignore-only-labels.

    Labels are read in a seeded random order until one holds a class other than 0, at most LABEL_SCAN of
    them; unreadable ones are left to the loader, which reports them.
    """
    ignore = train_set.ignore_index
    if cfg.allow_ignore_only_labels or train_set.num_classes < 2 or ignore == 0:
        return
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed))[:LABEL_SCAN]
    seen: set[int] = set()
    checked = []
    for index in order.tolist():
        try:
            values = set(torch.unique(load_label(train_set, index)).tolist())
        except BadSampleError:
            continue
        if values - {0, ignore}:
            return
        seen |= values
        checked.append(train_set.sample_id(index))
    if seen == {0, ignore}:
        raise TrainingError(
            f"{train_set.describe()}: the {len(checked)} labels read (e.g. {', '.join(checked[:3])}) hold only "
            f"0 and the ignore index {ignore}: a binary mask saved as 0/{ignore}? Its foreground would be ignored, "
            f"not learned. Store the foreground as class 1 (e.g. label // {ignore}), or pass "
            "--allow-ignore-only-labels if the ignored pixels are meant to be ignored"
        )


def check_crop(cfg: TrainConfig, raw: SegmentationModel) -> None:
    """Refuse a training crop smaller than the network's stride (its deepest features would be one pixel
    wide or less)."""
    stride = model_stride(raw)
    if min(cfg.crop) < stride:
        raise ConfigError(
            f"--crop {' '.join(map(str, cfg.crop))} is smaller than the network's stride {stride} (basenet "
            f"{cfg.basenet!r} at --output-stride {cfg.output_stride}): give --crop {stride} or more"
        )


def check_accumulation(cfg: TrainConfig, info: DistInfo) -> None:
    """Refuse a batch that does not split into --accumulate passes of equal size on every process."""
    if cfg.batch_size % (info.world_size * cfg.accumulate):
        raise TrainingError(
            f"--batch-size {cfg.batch_size} does not split into --accumulate {cfg.accumulate} passes on each of "
            f"{info.world_size} process(es): make it a multiple of {info.world_size * cfg.accumulate}"
        )


def basenet_frozen(cfg: TrainConfig, step: int) -> bool:
    """Return True when the step after `step` trains without the basenet (--freeze-basenet, --unfreeze-at)."""
    return cfg.freeze_basenet and (cfg.unfreeze_at == 0 or step < cfg.unfreeze_at)


def freeze_basenet(raw: SegmentationModel, frozen: bool) -> None:
    """Make the basenet's parameters trainable or not; a frozen one gets no gradients, so the optimizer skips it
    (no update, no weight decay, no momentum)."""
    for p in raw.basenet.parameters():
        p.requires_grad_(not frozen)


def set_train_mode(model: torch.nn.Module, freeze_bn: bool, frozen_basenet: bool = False) -> None:
    """Put `model` in training mode, BatchNorm layers in eval mode when `freeze_bn`, and the whole basenet
    (its BatchNorm statistics, its dropout) in eval mode when `frozen_basenet`."""
    model.train()
    if frozen_basenet:
        model.basenet.eval()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


def build_network(cfg: TrainConfig, info: DistInfo, restoring: bool) -> SegmentationModel:
    """Return the model on the run's device, seeded; ImageNet weights in the basenet unless restoring."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    # --init-from replaces every basenet weight, so ImageNet weights are not loaded (nor downloaded) first.
    pretrained = None if restoring or cfg.init_from or cfg.pretrained in ("", "none") else cfg.pretrained
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


def param_groups(cfg: TrainConfig, raw: SegmentationModel) -> list[dict]:
    """Return the optimizer's parameter groups: the basenet at --learnrate, the decoder at --difflr times it.

    A frozen basenet stays in its group (without gradients it is not updated), so that unfreezing it and
    resuming need no change of the optimizer.
    """
    return [
        {"params": list(raw.basenet.parameters()), "lr": cfg.learnrate, "name": "basenet"},
        {"params": list(raw.decoder.parameters()), "lr": cfg.learnrate * cfg.difflr, "name": "decoder"},
    ]


def describe_groups(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> str:
    """Return the runlog line of the parameter groups: parameters, peak learning rate and freezing."""
    parts = []
    for group in optimizer.param_groups:
        count = sum(p.numel() for p in group["params"])
        text = f"{group['name']} {count:,} parameters at lr {group['initial_lr']:.3g}"
        if group["name"] == "basenet" and cfg.freeze_basenet:
            text += f", frozen for the first {cfg.unfreeze_at} steps" if cfg.unfreeze_at else ", frozen"
        parts.append(text)
    return "parameter groups: " + "; ".join(parts)


def build_optimization(
    cfg: TrainConfig, raw: SegmentationModel, total: int, info: DistInfo, ignore_index: int
) -> Optimization:
    """Return SGD with momentum or AdamW over the parameter groups, the schedule, scaler and loss."""
    params = param_groups(cfg, raw)
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
        cfg.accumulate,
        cfg.clip_grad,
    )


def build_ema(cfg: TrainConfig, raw: SegmentationModel) -> AveragedModel | None:
    """Return the moving average of raw's weights and BatchNorm statistics (torch's AveragedModel: its first
    update copies the weights, then ema = decay * ema + (1 - decay) * weights), or None without --ema."""
    if not cfg.ema:
        return None
    ema = AveragedModel(raw, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    ema.module.eval().requires_grad_(False)
    return ema


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


def open_run_folder(
    cfg: TrainConfig, info: DistInfo, resume: Resume | None, notes: list[str]
) -> tuple[RunDir | None, RunLock | None]:
    """Return the run folder and this trainer's lock on it (rank 0 only): the resumed one, locked, its
    unloadable checkpoints set aside and cut back to its checkpoint, or a new one; write runargs.yaml."""
    if not info.is_main:
        return None, None
    folder = resume.run if resume is not None else new_run(cfg.runs_root, cfg.basenet, cfg.decoder, cfg.run_name)
    lock = lock_run(folder)
    if lock.stale:
        notes.append(f"took over {lock.path.name} from a trainer that is gone ({lock.stale})")
    print(f"run folder: {folder.path}", flush=True)
    if resume is not None:
        notes += checkpoint.heal(folder.checkpoints, resume.path, resume.unloadable)
    atomic_write(folder.runargs, cfg_mod.to_yaml(cfg))
    if resume is not None:
        truncate_metrics(folder.metrics, resume.state["step"])
        remove_temp_files(folder.checkpoints)
    return folder, lock


def restore(run: Run, resume: Resume) -> None:
    """Load model, optimizer, scheduler, scaler, counters, a pending evaluation and this rank's RNG state
    from a checkpoint (`check_resume_fits` has checked that they fit)."""
    state, where = resume.state, str(resume.path)
    checkpoint.load_weights(run.net.raw, state["model"], where)
    try:
        run.opt.optimizer.load_state_dict(state["optimizer"])
        run.opt.scheduler.load_state_dict(state["scheduler"])
        run.opt.scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise TrainingError(
            f"checkpoint {where}: its optimizer, scheduler or scaler state does not fit this run "
            f"({type(err).__name__}: {err})"
        ) from None
    run.progress.counters = {**run.progress.counters, **state["counters"]}
    run.progress.pending = dict(state["pending"])
    run.progress.step = run.progress.saved_step = run.progress.start_step = state["step"]
    # so that the checkpoint (which `seglab test` and the next resume read) records what the flags changed
    run.progress.resave = cfg_mod.to_dict(run.cfg) != cfg_mod.to_dict(resume.stored)
    note = checkpoint.set_rng_state(state["rng"][run.info.rank], where)
    if note:
        run.monitor.message(note)


def split_param_groups(state: dict, optimizer: torch.optim.Optimizer) -> None:
    """Split the single parameter group of a checkpoint written before the basenet/decoder groups into two,
    in place, so that runs started by an older seglab resume (both groups had the same settings)."""
    saved = state["optimizer"]["param_groups"]
    if len(saved) != 1 or len(optimizer.param_groups) != 2:
        return
    first = len(optimizer.param_groups[0]["params"])
    params = saved[0]["params"]
    state["optimizer"]["param_groups"] = [
        {**saved[0], "params": params[:first], "name": "basenet"},
        {**saved[0], "params": params[first:], "name": "decoder"},
    ]


def restore_extras(run: Run, resume: Resume) -> None:
    """Restore what `restore` does not: the EMA weights, the best full-val score so far, and the counters
    that older checkpoints lack (at their start values)."""
    state = resume.state
    run.progress.counters = {**COUNTERS, **run.progress.counters}
    run.progress.best = state.get("best")
    if run.progress.best and run.progress.best["step"] == state["step"] and run.folder is not None:
        checkpoint.keep_best(run.folder.checkpoints, resume.path)  # a kill may have come before best.pt moved
    if run.net.ema is not None:
        run.net.ema.module.load_state_dict(state["ema"]["model"])
        run.net.ema.n_averaged.fill_(state["ema"]["updates"])


def extend(run: Run) -> str | None:
    """Lengthen the restored schedule when the run now has more steps than it was started with (a larger
    --iters or --epochs); refuse fewer. Return the runlog line of an extension, else None."""
    scheduler = run.opt.scheduler
    before = scheduler.lr_lambdas[0].total
    if run.total == before:
        return None
    if run.total < before:
        raise TrainingError(
            f"cannot resume for {run.total} steps: the run was started for {before}; a run can be extended "
            "(a larger --iters or --epochs), not shortened"
        )
    extend_schedule(scheduler, run.total)
    return (
        f"extended from {before} to {run.total} steps: the learning rate of steps 1-{before} is unchanged, "
        f"steps {before + 1}-{run.total} run the {run.cfg.decaylr} decay again from {run.cfg.learnrate:g}"
    )


def build_run(cfg: TrainConfig, explicit: dict, info: DistInfo, resume: Resume | None, stop: StopFlag) -> Run:
    """Return the run, built step by step (restored from `resume` when continuing one)."""
    source: Source | None = None
    if resume is not None:  # the checkpoint's config, with what the command line set on top
        cfg = dataclasses.replace(resume.stored, **{**explicit, "resume": str(resume.run.path)})
    elif cfg.init_from:  # fine-tuning: the source's model settings unless the command line set them
        source = read_source(cfg.init_from)
        cfg = dataclasses.replace(cfg, **inherit(cfg, explicit, source))
    cfg = dataclasses.replace(
        cfg, dataset=cfg.dataset or ("voc" if cfg.data_root else "synthetic"), plugins=load_plugins(cfg.plugins)
    )
    check_trackers(cfg.logger)
    notes: list[str] = []
    train_set, val_set = load_data(cfg, notes)
    cfg = resolve(cfg, train_set, info.device)
    check_accumulation(cfg, info)
    if resume is not None:
        check_resume(resume, cfg)
        check_resume_fits(resume, train_set, info)
        check_runargs(resume, explicit)
    check_labels(cfg, train_set)
    if source is not None:
        check_source(cfg, source)
    # runargs.yaml and checkpoints hold no `resume`, so that `--config runargs.yaml` starts a new run.
    cfg = dataclasses.replace(cfg, resume="")
    raw = build_network(cfg, info, restoring=resume is not None)
    check_crop(cfg, raw)
    if source is not None:
        notes = transfer_weights(raw, cfg, source, list(train_set.classes)) + notes
    data = build_data(cfg, info, train_set, val_set, raw)
    total = cfg.iters or cfg.epochs * data.sampler.steps_per_epoch
    opt = build_optimization(cfg, raw, total, info, train_set.ignore_index)
    ema = build_ema(cfg, raw)
    folder, lock = open_run_folder(cfg, info, resume, notes)
    monitor = Monitor(
        folder,
        info.is_main,
        purge_step=resume.state["step"] + 1 if resume else None,
        loggers=cfg.logger,
        params=cfg_mod.to_dict(cfg),
    )
    run = Run(cfg, info, Network(raw, raw, cfg.channels_last, ema), opt, data, folder, monitor, stop, total, lock=lock)
    if resume is not None:
        split_param_groups(resume.state, opt.optimizer)
        restore(run, resume)
        restore_extras(run, resume)
        monitor.message(f"resumed from {resume.path} at step {run.progress.step}")
        extension = extend(run)
        if extension:
            monitor.message(extension)
    for note in notes:
        monitor.message(note)
    frozen = basenet_frozen(cfg, run.progress.step)
    freeze_basenet(raw, frozen)
    set_train_mode(raw, cfg.freeze_bn, frozen)
    run.net.model = wrap(cfg, info, raw)
    monitor.message(describe_groups(cfg, opt.optimizer))
    passes = f" in {cfg.accumulate} passes of {cfg.batch_size // cfg.accumulate}" if cfg.accumulate > 1 else ""
    monitor.message(
        f"{train_set.describe()}; {total} steps of {cfg.batch_size} images{passes} "
        f"({data.sampler.steps_per_epoch} per epoch) on {info.world_size} x {info.device}"
    )
    return run
