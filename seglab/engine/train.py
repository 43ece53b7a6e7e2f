"""`seglab train`: the training loop, readable top to bottom (`train`, `train_one_epoch`, `train_step`,
`after_step`), with run building, checkpoints, monitoring, sampling and DDP in small modules beside it.

A step is identified by the number of optimizer steps done (each of --accumulate forward/backward passes).
After step s: log (every --log-every), partial-val mIoU (every --eval-every) or full-val mIoU (every
--eval-full-every, and at the end; with --ema for the EMA weights too, and with --keep-best the best one
becomes checkpoints/best.pt), then the checkpoint (every --ckpt-every, and when stopping).
SIGTERM/SIGINT only set a flag; the loop sees it at the next step boundary (or between eval batches, or
right after a checkpoint write), saves `last` and exits with 128 + the signal number unless the run's work,
its final evaluation included, is done. An evaluation a signal cut short (or that was due at the step the
signal stopped) is pending in the checkpoint, with its step's record: a resume runs it first, so the resumed
run's metrics equal an uninterrupted run's. Launch with `torchrun` for DDP.
"""

from __future__ import annotations

import contextlib
import gc
import math
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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
    """Train from the run's step to its last; save; return 0 when all of the run's work (its final evaluation
    included) is done, else (stopped by a signal) 128 + the signal number."""
    info, progress, sampler = run.info, run.progress, run.data.sampler
    stopped = distributed.any_rank(run.stop.signum != 0, info.device)
    progress.bar = tqdm(
        total=run.total, initial=progress.step, desc="train", dynamic_ncols=True, disable=None if info.is_main else True
    )
    status = "FAILED"  # what the experiment trackers are told, unless the run finishes or is stopped
    try:
        if progress.resave:
            save(run)
        if progress.pending and not stopped:
            stopped = finish_pending(run)
        while not stopped and progress.step < run.total:
            sampler.set_position(progress.step // sampler.steps_per_epoch, progress.step % sampler.steps_per_epoch)
            stopped = train_one_epoch(run, run.data.loader)
        save(run)
        if progress.step < run.total or progress.pending:
            name = signal.Signals(run.stop.signum).name if run.stop.signum else "a signal to another rank"
            where = run.folder.path if run.folder is not None else "RUN_DIR"
            during = f" (its {progress.pending['eval']} evaluation is pending)" if progress.pending else ""
            run.monitor.message(
                f"stopped by {name} at step {progress.step}{during}; checkpoint saved; continue with: "
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
        if run.lock is not None:
            run.lock.release()


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
        if outcome.skipped:  # the count is summed over ranks, so every rank takes part in the gather
            for item in skipped_on_every_rank(batch):
                run.monitor.message(f"step {progress.step}: skipped {item['path']}: {item['reason']}")
        progress.counters["skipped"] += outcome.skipped
        progress.counters["window_loss"] += outcome.loss
        progress.counters["window_steps"] += 1
        if outcome.grad_norm is not None:
            progress.counters["window_grad_norm"] += outcome.grad_norm
            progress.counters["window_clipped"] += int(outcome.grad_norm > run.opt.clip_grad)
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
    the global gradient norm before clipping (None without --clip-grad) and the loss's terms (weighted
    contributions that add up to `loss`, by name)."""

    loss: float
    stopping: bool
    skipped: int
    grad_norm: float | None = None
    terms: dict[str, float] = field(default_factory=dict)


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


def skipped_on_every_rank(batch: dict) -> list[dict]:
    """Return the skipped samples of this step's global batch (a collective: every rank must call it)."""
    return [item for items in distributed.gather_objects(batch["skipped"]) for item in items]


def step_inputs(net: Network, batch: dict) -> tuple[Tensor, Tensor]:
    """Return (images, labels) of this rank's share of the batch; a share whose samples were all skipped is
    an empty batch of the network's stride size, which still runs forward and backward so that this rank
    takes part in DDP's collectives (it adds no loss and zero gradients)."""
    if len(batch["index"]):
        return batch["image"], batch["label"]
    size = model_stride(net.raw)
    return torch.zeros((0, 3, size, size), dtype=torch.uint8), torch.zeros((0, size, size), dtype=torch.uint8)


def train_step(net: Network, opt: Optimization, batch: dict, stop: StopFlag, info: DistInfo, step: int) -> StepOutcome:
    """Do optimizer step `step + 1` on `batch` (this rank's share of the global batch), in --accumulate
    forward/backward passes.

    Every rank decides alike from all-reduced numbers (a rank raising alone would leave the others waiting in a
    collective). The loss has one (sum, normalizer) per term (`Objective`); each term's global normalizer (valid
    pixels, or images, over all ranks) is reduced from the labels before any pass, so each pass's sums are
    divided by it and N passes add up to the gradient of one pass over the batch. The sums, normalizers, stop
    flag, skipped and used sample counts and whether a rank failed are reduced after the forward passes and
    before the last, gradient-synchronizing backward, which divides by the reduced normalizers: OHEM's kept
    pixels are known only then (with several passes, OHEM is the only term and the earlier passes' gradients
    are rescaled to them). A share whose samples were all skipped runs as an empty batch, so that its rank
    still takes part in DDP's collectives.
    """
    device = info.device
    images, labels = step_inputs(net, batch)
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    normalizers = distributed.all_reduce_sum(opt.loss_fn.normalizers(labels)).clamp(min=1.0)
    opt.optimizer.zero_grad(set_to_none=True)
    passes = [
        (x, y)
        for x, y in zip(images.tensor_split(opt.accumulate), labels.tensor_split(opt.accumulate), strict=True)
        if len(x)
    ] or [(images, labels)]
    count = len(normalizers)
    sums = torch.zeros(count, device=device)
    norms = torch.zeros(count, device=device)
    failed, last_sums = False, None
    for i, (part_images, part_labels) in enumerate(passes):
        last = i == len(passes) - 1
        with sync_gradients(net.model, last=last):
            x = net.raw.normalize(part_images)
            if net.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                with torch.autocast(device.type, dtype=opt.amp_dtype, enabled=opt.amp_dtype is not None):
                    output = net.model(x)  # the logits; (logits, aux logits) with an auxiliary head
                part_sums, part_norms = opt.loss_fn(output, part_labels)  # per term; fp32, outside autocast
            except ValueError as err:  # BatchNorm on one value per channel: decided by every rank below
                if "Expected more than 1 value per channel" not in str(err):
                    raise
                failed = True
                break
            if last:
                last_sums = part_sums  # its backward synchronizes gradients: only once every rank is known to go on
            else:
                opt.scaler.scale((part_sums * info.world_size / normalizers).sum()).backward()  # DDP averages
        sums += part_sums.detach()
        norms += part_norms
    flags = torch.tensor(
        [float(stop.signum != 0), float(len(batch["skipped"])), float(len(batch["index"])), float(failed)],
        device=device,
    )
    totals = distributed.all_reduce_sum(torch.cat([sums, norms, flags]))
    values = totals.tolist()
    stop_total, skipped, used, failures = values[2 * count :]
    if used == 0:
        bad = "; ".join(f"{item['path']}: {item['reason']}" for item in skipped_on_every_rank(batch))
        raise TrainingError(
            f"step {step + 1}: every sample of the batch was skipped ({bad}); "
            "run `seglab data check` and fix or remove these files"
        )
    if failures:
        raise TrainingError(
            f"step {step + 1}: a BatchNorm layer got a single value per channel (one sample with 1x1 features on "
            f"a process; the step used {int(used)} samples on {info.world_size} processes, {int(skipped)} skipped), "
            "which BatchNorm cannot normalize while training; use a larger --batch-size or --crop, or --freeze-bn"
        )
    global_norms = totals[count : 2 * count].clamp(min=1.0)
    if opt.loss_fn.ohem and len(passes) > 1:  # the earlier passes divided by the pixels before mining
        factor = normalizers[0] / global_norms[0]
        for p in net.raw.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)
    final = global_norms if opt.loss_fn.ohem else normalizers  # equal for the other terms
    opt.scaler.scale((last_sums * info.world_size / final).sum()).backward()
    grad_norm = clip_gradients(net.raw, opt) if opt.clip_grad > 0 else None
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.scheduler.step()
    if net.ema is not None:
        net.ema.update_parameters(net.raw)
    terms = [total / max(norm, 1.0) for total, norm in zip(values[:count], values[count : 2 * count], strict=True)]
    return StepOutcome(
        sum(terms),
        stop_total > 0,
        int(skipped),
        float(grad_norm) if grad_norm is not None else None,
        dict(zip(opt.loss_fn.names, terms, strict=True)),
    )


def after_step(run: Run, stopping: bool) -> bool:
    """Log, evaluate and checkpoint as due after a step; return True when the run must stop now.

    When a signal came during the step (`stopping`), the evaluation due at it is not started but left
    pending, as is one a signal cuts short; the step's record waits with it.
    """
    cfg, step = run.cfg, run.progress.step
    due = due_evaluation(run)
    if due or step % cfg.log_every == 0:
        record = log_record(run)
        if stopping and due:
            run.progress.pending = {"eval": due, "record": record}
        elif not evaluate_and_record(run, due, record):
            stopping = True
        elif record.get("best_checkpoint"):
            save(run)
            keep_best(run)
            stopping = signalled_during_save(run)
    if stopping or step >= run.total or step % cfg.ckpt_every == 0 or (cfg.keep > 0 and step % cfg.keep == 0):
        save(run)
        stopping = stopping or signalled_during_save(run)
    return stopping


def due_evaluation(run: Run) -> str:
    """Return the evaluation due after the current step: "final" (the last step), "full" (--eval-full-every),
    "partial" (--eval-every) or ""."""
    step, cfg = run.progress.step, run.cfg
    if step >= run.total:
        return "final"
    if cfg.eval_full_every > 0 and step % cfg.eval_full_every == 0:
        return "full"
    return "partial" if cfg.eval_every > 0 and step % cfg.eval_every == 0 else ""


def evaluate_and_record(run: Run, kind: str, record: dict) -> bool:
    """Run the `kind` evaluation ("partial", "full", "final" or "": none) of the current step into `record`
    and write the record; return False, writing nothing, when a signal cut the evaluation short (it is then
    pending). A full evaluation that is the best so far marks the record `best_checkpoint` (--keep-best)."""
    step, val = run.progress.step, run.data.val_data
    if kind:
        full = kind in ("full", "final")
        indices = list(range(len(val))) if full else partial_subset(len(val), run.cfg.eval_fraction, run.cfg.seed, step)
        desc = {"final": "val", "full": f"full val @{step}", "partial": f"partial val @{step}"}[kind]
        scores = evaluate_models(run, indices, desc, "val_miou" if full else "val_miou_partial")
        if scores is None:
            run.progress.pending = {"eval": kind, "record": record}
            return False
        record.update(scores)
        add_overlays(run, indices[:NUM_OVERLAYS])
        if full and run.cfg.keep_best and update_best(run, record):
            record["best_checkpoint"] = True
    run.progress.pending = {}
    run.monitor.record(record, run.total, eta_s=eta(run))
    if kind == "final":
        run.monitor.message(final_summary(record))
    return True


def finish_pending(run: Run) -> bool:
    """Run the evaluation pending at a resumed run's step, write its record and save; return True when a
    signal stops the run again."""
    pending = run.progress.pending
    run.monitor.message(f"step {run.progress.step}: running the {pending['eval']} evaluation a signal cut short")
    record = dict(pending["record"])
    if not evaluate_and_record(run, pending["eval"], record):
        return True
    save(run, force=True)
    if record.get("best_checkpoint"):
        keep_best(run)
    return signalled_during_save(run)


def signalled_during_save(run: Run) -> bool:
    """Return True when a signal reached any rank since the step's all-reduce (during its evaluation's
    logging or the checkpoint write): the run then stops at this saved step rather than one step later."""
    return distributed.any_rank(run.stop.signum != 0, run.info.device)


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
    terms = {k.removeprefix("window_loss_"): v for k, v in progress.counters.items() if k.startswith("window_loss_")}
    if terms:  # a sum of loss terms, or an auxiliary head: the mean of each weighted contribution
        record["loss_terms"] = {name: value / max(steps, 1) for name, value in terms.items()}
        progress.counters.update(dict.fromkeys((f"window_loss_{name}" for name in terms), 0.0))
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


def save(run: Run, force: bool = False) -> None:
    """Write the checkpoint of the current step (rank 0 writes; every rank contributes its RNG state); once
    per step unless `force` (a pending evaluation was finished)."""
    progress, raw = run.progress, run.net.raw
    if progress.saved_step == progress.step and not (force or progress.resave):
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
            "pending": dict(progress.pending),
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
    progress.saved_step, progress.resave = progress.step, False
