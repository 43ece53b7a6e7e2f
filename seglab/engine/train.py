"""`seglab train`: the training loop, readable top to bottom (`train`, `train_one_epoch`, `train_step`,
`after_step`), with run building, checkpoints, monitoring, sampling and DDP in small modules beside it.

A step is identified by the number of optimizer steps done. After step s: log (every --log-every),
partial-val mIoU (every --eval-every), then the checkpoint (every --ckpt-every, and when stopping).
SIGTERM/SIGINT only set a flag; the loop sees it at the next step boundary (or between eval batches),
saves `last` and exits with 128 + the signal number. Launch with `torchrun` for DDP.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from seglab import config as cfg_mod
from seglab.config import TrainConfig
from seglab.engine import checkpoint, distributed
from seglab.engine.distributed import DistInfo
from seglab.engine.inference import model_stride, whole_image
from seglab.engine.sampler import ShardSampler, partial_subset
from seglab.engine.setup import (
    Network,
    Optimization,
    Run,
    build_run,
    explicit_keys,
    find_resume,
    make_loader,
    set_train_mode,
)
from seglab.engine.signals import StopFlag
from seglab.engine.validate import validate
from seglab.errors import TrainingError
from seglab.metrics.confusion import segmentation_metrics
from seglab.visual import panel

NUM_OVERLAYS = 3


def train(cfg: TrainConfig, explicit: dict | None = None) -> int:
    """Run (or resume) a training run; return the exit code (128 + signal number when stopped by one).

    `explicit` holds the keys the caller set (a resumed run keeps them over the checkpoint's config);
    by default, every key that differs from TrainConfig's defaults.
    """
    explicit = explicit_keys(cfg) if explicit is None else explicit
    resume = find_resume(cfg)
    info = distributed.init(explicit.get("device", resume.stored.device) if resume else cfg.device)
    stop = StopFlag()
    previous = stop.install()
    try:
        run = build_run(cfg, explicit, info, resume, stop)
        return train_loop(run)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        distributed.cleanup()


def train_loop(run: Run) -> int:
    """Train from the run's step to its last; save; return 0, or 128 + the signal number when stopped."""
    info, progress, sampler = run.info, run.progress, run.data.sampler
    stopped = distributed.any_rank(run.stop.signum != 0, info.device)
    progress.bar = tqdm(
        total=run.total, initial=progress.step, desc="train", dynamic_ncols=True, disable=None if info.is_main else True
    )
    try:
        while not stopped and progress.step < run.total:
            sampler.set_position(progress.step // sampler.steps_per_epoch, progress.step % sampler.steps_per_epoch)
            stopped = train_one_epoch(run, run.data.loader)
        save(run)
        if stopped and progress.step < run.total:
            name = signal.Signals(run.stop.signum).name if run.stop.signum else "a signal to another rank"
            where = run.folder.path if run.folder is not None else "RUN_DIR"
            run.monitor.message(
                f"stopped by {name} at step {progress.step}; checkpoint saved; continue with: "
                f"seglab train --resume {where}"
            )
            return 128 + (run.stop.signum or signal.SIGTERM)
        last = run.folder.last if run.folder is not None else "last.pt"
        run.monitor.message(f"finished {run.total} steps; checkpoint {last}")
        return 0
    except TrainingError as err:
        run.monitor.message(str(err))
        raise
    finally:
        progress.bar.close()
        run.monitor.close()


def train_one_epoch(run: Run, batches: Iterable[dict]) -> bool:
    """Train on `batches` (the loader: the rest of the sampler's epoch) up to the run's last step; return True
    when signalled."""
    progress = run.progress
    for batch in batches:
        outcome = train_step(run.net, run.opt, batch, run.stop, run.info, progress.step)
        progress.step += 1
        if not math.isfinite(outcome.loss):
            ranks = distributed.gather_objects([run.data.train_set.sample_id(i) for i in batch["index"].tolist()])
            ids = ", ".join(i for rank_ids in ranks for i in rank_ids)
            raise TrainingError(
                f"step {progress.step}: the loss is {outcome.loss}; batch samples: {ids}. The run "
                f"stopped; its last good checkpoint is step {progress.saved_step}. Lower --learnrate, or try "
                f"--amp bf16/off."
            )
        for item in batch["skipped"]:
            run.monitor.message(f"step {progress.step}: skipped {item['path']}: {item['reason']}")
        progress.counters["skipped"] += outcome.skipped
        progress.counters["window_loss"] += outcome.loss
        progress.counters["window_steps"] += 1
        if len(outcome.terms) > 1:  # a sum of loss terms, or an auxiliary head: log each contribution
            for name, value in outcome.terms.items():
                progress.counters[f"window_loss_{name}"] = progress.counters.get(f"window_loss_{name}", 0.0) + value
        if progress.bar is not None:
            progress.bar.update(1)
            progress.bar.set_postfix(loss=f"{outcome.loss:.4f}", refresh=False)
        if after_step(run, outcome.stopping):
            return True
        if progress.step >= run.total:
            return False
    return False


@dataclass(frozen=True)
class StepOutcome:
    """What one optimizer step reports: the global mean loss, whether any rank was signalled, samples skipped,
    and the loss's terms (weighted contributions that add up to `loss`, by name)."""

    loss: float
    stopping: bool
    skipped: int
    terms: dict[str, float] = field(default_factory=dict)


def train_step(net: Network, opt: Optimization, batch: dict, stop: StopFlag, info: DistInfo, step: int) -> StepOutcome:
    """Do optimizer step `step + 1` on `batch`."""
    device = info.device
    if len(batch["index"]) == 0:
        bad = "; ".join(f"{item['path']}: {item['reason']}" for item in batch["skipped"])
        raise TrainingError(
            f"step {step + 1}: every sample of the batch was skipped ({bad}); "
            "run `seglab data check` and fix or remove these files"
        )
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    x = net.raw.normalize(images)
    if net.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=opt.amp_dtype, enabled=opt.amp_dtype is not None):
        output = net.model(x)  # the logits; (logits, aux logits) with an auxiliary head
    sums, norms = opt.loss_fn(output, labels)  # one (sum, normalizer) per loss term; fp32, outside autocast
    # One all-reduce carries the terms' sums and normalizers, the stop flag and the skipped-sample count.
    count = len(sums)
    flags = torch.tensor([float(stop.signum != 0), float(len(batch["skipped"]))], device=device)
    totals = torch.cat([sums.detach(), norms, flags])
    distributed.all_reduce_sum(totals)
    global_norms = totals[count : 2 * count].clamp(min=1.0)
    loss = (sums * info.world_size / global_norms).sum()  # DDP averages gradients over ranks
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scaler.scale(loss).backward()
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.scheduler.step()
    values = totals.tolist()
    terms = [total / max(norm, 1.0) for total, norm in zip(values[:count], values[count : 2 * count], strict=True)]
    return StepOutcome(sum(terms), values[-2] > 0, int(values[-1]), dict(zip(opt.loss_fn.names, terms, strict=True)))


def after_step(run: Run, stopping: bool) -> bool:
    """Log, evaluate and checkpoint as due after a step; return True when the run must stop now."""
    cfg, step = run.cfg, run.progress.step
    final = step >= run.total
    eval_due = cfg.eval_every > 0 and step % cfg.eval_every == 0 and not final and not stopping
    record = None
    if eval_due or final or step % cfg.log_every == 0:
        record = log_record(run)
    if eval_due:
        indices = partial_subset(len(run.data.val_data), cfg.eval_fraction, cfg.seed, step)
        cm = validate_run(run, indices, desc=f"partial val @{step}")
        if cm is None:
            stopping = True
        else:
            record.update(val_record(run, cm, "val_miou_partial"))
            add_overlays(run, indices[:NUM_OVERLAYS])
    if final and not stopping:
        cm = validate_run(run, range(len(run.data.val_data)), desc="val")
        if cm is None:
            stopping = True
        else:
            record.update(val_record(run, cm, "val_miou"))
            add_overlays(run, list(range(min(NUM_OVERLAYS, len(run.data.val_data)))))
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
    progress, now = run.progress, time.perf_counter()
    steps = progress.counters["window_steps"]
    record = {
        "step": progress.step,
        "epoch": (progress.step - 1) // run.steps_per_epoch,
        "loss": progress.counters["window_loss"] / max(steps, 1),
        "lr": run.opt.scheduler.get_last_lr()[0],
        "images_per_s": steps * run.cfg.batch_size / max(now - progress.window_start, 1e-9),
        "skipped": progress.counters["skipped"],
    }
    terms = {k.removeprefix("window_loss_"): v for k, v in progress.counters.items() if k.startswith("window_loss_")}
    if terms:
        record["loss_terms"] = {name: value / max(steps, 1) for name, value in terms.items()}
        progress.counters.update(dict.fromkeys((f"window_loss_{name}" for name in terms), 0.0))
    progress.counters.update(window_loss=0.0, window_steps=0)
    progress.window_start = now
    return record


def eta(run: Run) -> float | None:
    """Return the estimated seconds left, from the mean step time of this process."""
    progress = run.progress
    done = progress.step - progress.start_step
    return None if done == 0 else (time.perf_counter() - progress.started) / done * (run.total - progress.step)


def val_record(run: Run, cm: Tensor, key: str) -> dict:
    """Return {key: mIoU, "val_per_class_iou": {...}} from a confusion matrix."""
    metrics = segmentation_metrics(cm, run.data.train_set.classes)
    return {key: metrics["miou"], "val_per_class_iou": metrics["per_class_iou"]}


def final_summary(record: dict) -> str:
    """Return the end-of-run lines: full-val mIoU and the IoU of each class."""
    lines = [f"final val mIoU {100 * record['val_miou']:.2f} at step {record['step']}"]
    for name, iou in record["val_per_class_iou"].items():
        lines.append(f"  {name:<20} {'absent' if iou is None else f'{100 * iou:.2f}'}")
    return "\n".join(lines)


def validate_run(run: Run, indices: Sequence[int], desc: str) -> Tensor | None:
    """Return the val confusion matrix of `indices` (sharded over ranks); None when a signal cut it short."""
    loader = make_loader(
        run.cfg,
        run.info,
        run.data.val_data,
        run.data.train_set.ignore_index,
        batch_size=run.cfg.eval_batch_size,
        sampler=ShardSampler(indices, run.info.rank, run.info.world_size),
    )
    cm = validate(
        run.net.raw,
        loader,
        run.data.train_set.ignore_index,
        run.info.device,
        run.opt.amp_dtype,
        run.stop,
        desc=desc,
        report=run.monitor.message,
        show=run.info.is_main,
    )
    set_train_mode(run.net.raw, run.cfg.freeze_bn)
    return cm


@torch.inference_mode()
def add_overlays(run: Run, indices: list[int]) -> None:
    """Send image | label | prediction overlays of a few val samples to TensorBoard (rank 0 only)."""
    if not run.info.is_main:
        return
    raw, train_set = run.net.raw, run.data.train_set
    raw.eval()
    panels = []
    for index in indices:
        sample = run.data.val_data[index]
        if "skipped" in sample:
            continue
        image = sample["image"].to(run.info.device)
        pred = whole_image(raw, raw.normalize(image[None]), model_stride(raw)).argmax(1)[0]
        panels.append(panel(sample["image"], sample["label"], pred, train_set.palette, train_set.ignore_index))
    set_train_mode(raw, run.cfg.freeze_bn)
    run.monitor.images("val/overlay", panels, run.progress.step)


def save(run: Run) -> None:
    """Write the checkpoint of the current step (rank 0 writes; every rank contributes its RNG state)."""
    progress, raw = run.progress, run.net.raw
    if progress.saved_step == progress.step:
        return
    bad = [name for name, p in raw.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingError(
            f"step {progress.step}: parameters {', '.join(bad[:5])} are not finite; not saving. "
            f"The last good checkpoint is step {progress.saved_step}."
        )
    rngs = distributed.gather_objects(checkpoint.rng_state())
    if run.folder is not None:
        train_set = run.data.train_set
        state = {
            "format": checkpoint.FORMAT,
            "model": raw.state_dict(),
            "optimizer": run.opt.optimizer.state_dict(),
            "scheduler": run.opt.scheduler.state_dict(),
            "scaler": run.opt.scaler.state_dict(),
            "step": progress.step,
            "epoch": progress.step // run.steps_per_epoch,
            "position": progress.step % run.steps_per_epoch,
            "rng": rngs,
            "config": cfg_mod.to_yaml(run.cfg),
            "counters": dict(progress.counters),
            "dataset": {
                "class_names": list(train_set.classes),
                "ignore_index": train_set.ignore_index,
                "num_train": len(train_set),
            },
        }
        checkpoint.save_checkpoint(state, run.folder.checkpoints, progress.step, run.cfg.keep)
    progress.saved_step = progress.step
