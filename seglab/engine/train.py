"""`seglab train`: the training loop, readable top to bottom (`train`, `train_one_epoch`, `train_step`,
`after_step`), with run building, checkpoints, monitoring, sampling and DDP in small modules beside it.

A step is identified by the number of optimizer steps done (each of --accumulate forward/backward passes).
After step s: log (every --log-every), partial-val mIoU (every --eval-every) or full-val mIoU (every
--eval-full-every, and at the end; with --ema for the EMA weights too, and with --keep-best the best one
becomes checkpoints/best.pt), then the checkpoint (every --ckpt-every, and when stopping).
SIGTERM/SIGINT only set a flag; the loop sees it at the next step boundary (or between eval batches),
saves `last` and exits with 128 + the signal number. Launch with `torchrun` for DDP.
"""

from __future__ import annotations

import contextlib
import gc
import math
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
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
    basenet_frozen,
    build_run,
    explicit_keys,
    find_resume,
    freeze_basenet,
    make_loader,
    set_train_mode,
    wrap,
)
from seglab.engine.signals import StopFlag
from seglab.engine.validate import validate
from seglab.errors import TrainingError
from seglab.metrics.confusion import segmentation_metrics
from seglab.runs import step_name
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
    status = "FAILED"  # what the experiment trackers are told, unless the run finishes or is stopped
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
            status = "KILLED"
            return 128 + (run.stop.signum or signal.SIGTERM)
        last = run.folder.last if run.folder is not None else "last.pt"
        run.monitor.message(f"finished {run.total} steps; checkpoint {last}")
        status = "FINISHED"
        return 0
    except TrainingError as err:
        run.monitor.message(str(err))
        raise
    finally:
        progress.bar.close()
        run.monitor.close(status)


def train_one_epoch(run: Run, batches: Iterable[dict]) -> bool:
    """Train on `batches` (the loader: the rest of the sampler's epoch) up to the run's last step; return True
    when signalled."""
    progress = run.progress
    for batch in batches:
        unfreeze_if_due(run)
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
        if outcome.grad_norm is not None:
            progress.counters["window_grad_norm"] += outcome.grad_norm
            progress.counters["window_clipped"] += int(outcome.grad_norm > run.opt.clip_grad)
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
    and the global gradient norm before clipping (None without --clip-grad)."""

    loss: float
    stopping: bool
    skipped: int
    grad_norm: float | None = None


def unfreeze_if_due(run: Run) -> None:
    """Give the basenet back to training once --unfreeze-at steps are done (DDP and torch.compile wrap anew:
    DDP only reduces the gradients of parameters that were trainable when it was built)."""
    raw = run.net.raw
    due = run.cfg.freeze_basenet and run.cfg.unfreeze_at and run.progress.step == run.cfg.unfreeze_at
    if not due or any(p.requires_grad for p in raw.basenet.parameters()):  # a resume there built it unfrozen
        return
    freeze_basenet(raw, False)
    set_train_mode(raw, run.cfg.freeze_bn, False)
    run.net.model = raw
    gc.collect()  # the old DDP wrapper's reducer must be gone before a new one hooks the same parameters
    run.net.model = wrap(run.cfg, run.info, raw)
    run.monitor.message(f"after step {run.progress.step} the basenet trains too (--unfreeze-at {run.cfg.unfreeze_at})")


def sync_gradients(model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Return the context of one accumulation pass: under DDP only the last pass all-reduces gradients."""
    ddp = getattr(model, "_orig_mod", model)  # torch.compile keeps the wrapped module there
    if last or not isinstance(ddp, DistributedDataParallel):
        return contextlib.nullcontext()
    return ddp.no_sync()


def clip_gradients(raw: torch.nn.Module, opt: Optimization) -> Tensor:
    """Clip the global gradient norm (over every parameter, after the DDP all-reduce) to --clip-grad; return
    the norm before clipping. fp16 gradients are unscaled first, so the clip is in true units."""
    opt.scaler.unscale_(opt.optimizer)
    return torch.nn.utils.clip_grad_norm_(raw.parameters(), opt.clip_grad)


def train_step(net: Network, opt: Optimization, batch: dict, stop: StopFlag, info: DistInfo, step: int) -> StepOutcome:
    """Do optimizer step `step + 1` on `batch`, in --accumulate forward/backward passes."""
    device = info.device
    if len(batch["index"]) == 0:
        bad = "; ".join(f"{item['path']}: {item['reason']}" for item in batch["skipped"])
        raise TrainingError(
            f"step {step + 1}: every sample of the batch was skipped ({bad}); "
            "run `seglab data check` and fix or remove these files"
        )
    images = batch["image"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    # The global batch's normalizer (valid pixels over all ranks) is known before any forward pass, so each
    # pass's loss sum is divided by it and N passes add up to the gradient of one pass over the batch.
    normalizer = distributed.all_reduce_sum(opt.loss_fn.normalizer(labels)).clamp(min=1.0)
    opt.optimizer.zero_grad(set_to_none=True)
    passes = [
        (x, y)
        for x, y in zip(images.tensor_split(opt.accumulate), labels.tensor_split(opt.accumulate), strict=True)
        if len(x)
    ]
    loss_sum = torch.zeros((), device=device)
    norm = torch.zeros((), device=device)
    for i, (part_images, part_labels) in enumerate(passes):
        with sync_gradients(net.model, last=i == len(passes) - 1):
            x = net.raw.normalize(part_images)
            if net.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=opt.amp_dtype, enabled=opt.amp_dtype is not None):
                logits = net.model(x)
            part_sum, part_norm = opt.loss_fn(logits, part_labels)  # fp32, outside autocast
            opt.scaler.scale(part_sum * info.world_size / normalizer).backward()  # DDP averages over ranks
        loss_sum += part_sum.detach()
        norm += part_norm
    # One all-reduce carries the loss, its normalizer, the stop flag and the skipped-sample count.
    totals = torch.stack(
        [
            loss_sum,
            norm,
            torch.tensor(float(stop.signum != 0), device=device),
            torch.tensor(float(len(batch["skipped"])), device=device),
        ]
    )
    distributed.all_reduce_sum(totals)
    if opt.loss_fn.ohem:  # OHEM keeps a share of the pixels known only after the passes: renormalize to it
        factor = normalizer / totals[1].clamp(min=1.0)
        for p in net.raw.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)
    grad_norm = clip_gradients(net.raw, opt) if opt.clip_grad > 0 else torch.zeros((), device=device)
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.scheduler.step()
    if net.ema is not None:
        net.ema.update_parameters(net.raw)
    loss_total, norm_total, stop_total, skipped, norm_value = torch.cat([totals, grad_norm.float().view(1)]).tolist()
    return StepOutcome(
        loss_total / max(norm_total, 1.0), stop_total > 0, int(skipped), norm_value if opt.clip_grad > 0 else None
    )


def after_step(run: Run, stopping: bool) -> bool:
    """Log, evaluate and checkpoint as due after a step; return True when the run must stop now."""
    cfg, step = run.cfg, run.progress.step
    final = step >= run.total
    full_due = not stopping and (final or (cfg.eval_full_every > 0 and step % cfg.eval_full_every == 0))
    eval_due = cfg.eval_every > 0 and step % cfg.eval_every == 0 and not final and not stopping and not full_due
    record = None
    if eval_due or full_due or final or step % cfg.log_every == 0:
        record = log_record(run)
    if eval_due:
        indices = partial_subset(len(run.data.val_data), cfg.eval_fraction, cfg.seed, step)
        scores = evaluate_models(run, indices, f"partial val @{step}", "val_miou_partial")
        if scores is None:
            stopping = True
        else:
            record.update(scores)
            add_overlays(run, indices[:NUM_OVERLAYS])
    best = False
    if full_due:
        scores = evaluate_models(
            run, range(len(run.data.val_data)), "val" if final else f"full val @{step}", "val_miou"
        )
        if scores is None:
            stopping = True
        else:
            record.update(scores)
            add_overlays(run, list(range(min(NUM_OVERLAYS, len(run.data.val_data)))))
            best = cfg.keep_best and update_best(run, record)
            if best:
                record["best_checkpoint"] = True
    if record is not None:
        run.monitor.record(record, run.total, eta_s=eta(run))
    if record is not None and "val_miou" in record and final:
        run.monitor.message(final_summary(record))
    if best:
        save(run)
        keep_best(run)
    if stopping or final or step % cfg.ckpt_every == 0 or (cfg.keep > 0 and step % cfg.keep == 0):
        save(run)
    return stopping


def evaluate_models(run: Run, indices: Sequence[int], desc: str, key: str) -> dict | None:
    """Return {key: mIoU, "val_per_class_iou": ...} of the model on `indices` of val, and with --ema
    {key + "_ema": mIoU} of the EMA weights; None when a signal cut the evaluation short."""
    cm = validate_run(run, indices, desc)
    if cm is None:
        return None
    scores = val_record(run, cm, key)
    if run.net.ema is not None:
        cm = validate_run(run, indices, f"{desc} (EMA)", run.net.ema.module)
        if cm is None:
            return None
        scores[f"{key}_ema"] = val_record(run, cm, key)[key]
    return scores


def update_best(run: Run, record: dict) -> bool:
    """Return True (and remember it) when this full val is the best so far: by the EMA weights' mIoU with
    --ema (what `seglab test` evaluates), else by the model's; ties keep the earlier step."""
    key = "val_miou_ema" if run.net.ema is not None else "val_miou"
    score, best = record.get(key), run.progress.best
    if score is None or (best is not None and score <= best["miou"]):
        return False
    run.progress.best = {"step": run.progress.step, "miou": score, "key": key}
    return True


def keep_best(run: Run) -> None:
    """Point checkpoints/best.pt at the checkpoint just saved (rank 0) and say so in the runlog."""
    if run.folder is None:
        return
    path = checkpoint.keep_best(run.folder.checkpoints, run.folder.checkpoints / step_name(run.progress.step))
    best = run.progress.best
    label = "EMA full-val" if best["key"] == "val_miou_ema" else "full-val"
    run.monitor.message(f"step {best['step']}: best {label} mIoU so far, {100 * best['miou']:.2f}; wrote {path}")


def log_record(run: Run) -> dict:
    """Return the record of the current step (mean loss since the previous record; epoch: the one the step
    belongs to) and reset the loss window."""
    progress, now = run.progress, time.perf_counter()
    steps = progress.counters["window_steps"]
    rates = run.opt.scheduler.get_last_lr()
    record = {
        "step": progress.step,
        "epoch": (progress.step - 1) // run.steps_per_epoch,
        "loss": progress.counters["window_loss"] / max(steps, 1),
        "lr": rates[0],
        "images_per_s": steps * run.cfg.batch_size / max(now - progress.window_start, 1e-9),
        "skipped": progress.counters["skipped"],
    }
    if run.cfg.difflr != 1:
        record["lr_decoder"] = rates[1]
    if run.opt.clip_grad > 0:  # the mean norm before clipping, and how many steps of the window were clipped
        record["grad_norm"] = progress.counters["window_grad_norm"] / max(steps, 1)
        record["clipped_steps"] = progress.counters["window_clipped"]
    progress.counters.update(window_loss=0.0, window_steps=0, window_grad_norm=0.0, window_clipped=0)
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
    """Return the end-of-run lines: full-val mIoU (and the EMA weights') and the IoU of each class."""
    lines = [f"final val mIoU {100 * record['val_miou']:.2f} at step {record['step']}"]
    if record.get("val_miou_ema") is not None:
        lines.append(f"final val mIoU of the EMA weights {100 * record['val_miou_ema']:.2f}")
    for name, iou in record["val_per_class_iou"].items():
        lines.append(f"  {name:<20} {'absent' if iou is None else f'{100 * iou:.2f}'}")
    return "\n".join(lines)


def training_mode(run: Run) -> None:
    """Put the model back in training mode after an evaluation (frozen parts stay in eval mode)."""
    set_train_mode(run.net.raw, run.cfg.freeze_bn, basenet_frozen(run.cfg, run.progress.step))


def validate_run(run: Run, indices: Sequence[int], desc: str, model: torch.nn.Module | None = None) -> Tensor | None:
    """Return the val confusion matrix of `model` (default: the one training) on `indices` (sharded over
    ranks); None when a signal cut it short."""
    loader = make_loader(
        run.cfg,
        run.info,
        run.data.val_data,
        run.data.train_set.ignore_index,
        batch_size=run.cfg.eval_batch_size,
        sampler=ShardSampler(indices, run.info.rank, run.info.world_size),
    )
    cm = validate(
        run.net.raw if model is None else model,
        loader,
        run.data.train_set.ignore_index,
        run.info.device,
        run.opt.amp_dtype,
        run.stop,
        desc=desc,
        report=run.monitor.message,
        show=run.info.is_main,
    )
    training_mode(run)
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
    training_mode(run)
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
        if run.net.ema is not None:
            ema = run.net.ema
            state["ema"] = {"decay": run.cfg.ema, "updates": int(ema.n_averaged), "model": ema.module.state_dict()}
        if progress.best is not None:
            state["best"] = dict(progress.best)
        checkpoint.save_checkpoint(state, run.folder.checkpoints, progress.step, run.cfg.keep)
    progress.saved_step = progress.step
