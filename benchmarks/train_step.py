"""Engine overhead: seglab's training loop vs a bare PyTorch loop, same model, batch and in-memory data.

seglab's side is `seglab.engine.train.train_one_epoch` on a run built by `build_run` (the code behind
`seglab train`: loss with DDP-exact normalization, a stop-flag/loss reduction and a host sync per step,
non-finite check, metrics records every --log-every steps, progress bar). The bare loop is normalize ->
forward -> cross-entropy -> backward -> SGD step -> LR step, with no per-step host sync. Rounds alternate
between the two so that load on a shared machine hits both alike; the median of each is reported.

    python benchmarks/train_step.py --basenet mobilenet_v2 --decoder fcn8s --batch-size 8 --crop 128
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from seglab.config import TrainConfig
from seglab.engine import distributed
from seglab.engine.schedule import build_scheduler
from seglab.engine.setup import build_run
from seglab.engine.signals import StopFlag
from seglab.engine.train import train_one_epoch
from seglab.models import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model, optimizer, scheduler, batches, device, amp_dtype) -> None:
    """The reference: the plainest correct training loop over `batches`."""
    for batch in batches:
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True).long()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(model.normalize(images))
        loss = F.cross_entropy(logits.float(), labels, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--basenet", default="mobilenet_v2")
    parser.add_argument("--decoder", default="fcn8s")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per loop (alternating)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"))
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args()

    total_steps = (args.rounds + 1) * args.steps
    with tempfile.TemporaryDirectory() as runs_root:
        cfg = TrainConfig(
            basenet=args.basenet,
            decoder=args.decoder,
            pretrained="none",
            dataset="synthetic",
            dataset_options={"length": 4 * args.batch_size, "size": args.crop},
            crop=[args.crop],
            batch_size=args.batch_size,
            iters=10 * total_steps,
            workers=0,
            log_every=20,
            eval_every=0,
            ckpt_every=10 * total_steps,
            keep=0,
            runs_root=runs_root,
            device=args.device,
            amp=args.amp,
            channels_last=args.channels_last,
        )
        info = distributed.init(cfg.device)
        run = build_run(cfg, {}, info, None, StopFlag())
        device, amp_dtype = info.device, run.opt.amp_dtype
        batches = list(run.data.loader)  # in memory: both loops read the same decoded, augmented batches
        rounds = [[batches[i % len(batches)] for i in range(args.steps)]] * (args.rounds + 1)

        torch.manual_seed(0)
        model = build_model(args.basenet, args.decoder, run.net.raw.num_classes).to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.learnrate, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        scheduler = build_scheduler(optimizer, "poly", 10 * total_steps)

        timings: dict[str, list[float]] = {"bare": [], "seglab": []}
        for i, steps in enumerate(rounds):  # round 0 warms both up and is not timed
            for name in ("bare", "seglab"):
                sync(device)
                start = time.perf_counter()
                if name == "bare":
                    bare_loop(model, optimizer, scheduler, steps, device, amp_dtype)
                else:
                    train_one_epoch(run, steps)
                sync(device)
                if i:
                    timings[name].append(args.steps / (time.perf_counter() - start))
        run.monitor.close()
        distributed.cleanup()

    bare, ours = statistics.median(timings["bare"]), statistics.median(timings["seglab"])
    print(
        f"{args.basenet} x {args.decoder}, batch {args.batch_size}, {args.crop} px, {device}, amp {run.cfg.amp}: "
        f"bare {bare:.2f} steps/s, seglab {ours:.2f} steps/s, ratio seglab/bare {ours / bare:.3f} "
        f"(median of {args.rounds} rounds of {args.steps} steps)"
    )


if __name__ == "__main__":
    main()
