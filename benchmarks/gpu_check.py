"""The GPU path, proven on a device: one script that runs every CUDA-specific part of seglab and records it.

Each step is timed and independent (a failure is recorded with its traceback and the next step runs):

- train_amp: training steps of FCN-8s/ResNet18 and DeepLabV3/ResNet50 with --amp bf16, fp16 (gradient
  scaler active) and off: images/s, peak memory and the loss after N steps (bf16/fp16 within 10% of fp32);
- engine_overhead: seglab's `train_one_epoch` vs a bare PyTorch loop on the same batches (benchmarks/
  train_step.py's loop), and model_speed: seglab's DeepLabV3-R50 vs torchvision's, forward + backward;
- data_pipeline: seglab's loader alone (0/4/8/16 workers) on generated VOC-like JPEGs vs the training step,
  i.e. whether the GPU would wait on data;
- channels_last and compile: the training step with --channels-last and --compile;
- modern_models: ConvNeXt and Swin with UPerNet and a ViT with SegFormer at --amp bf16, with the auxiliary
  head, a ce+dice loss, gradient accumulation, EMA and clipping on;
- kill_resume: `seglab train` killed with SIGKILL mid-run and resumed; the resumed losses against the
  uninterrupted run's (exact on CPU; on CUDA within the stated tolerance, kernels not being deterministic);
- test_bench_export: `seglab test`, `seglab bench` and `seglab export` (ONNX Runtime with the CUDA provider
  when onnxruntime-gpu is installed) on that run.

It writes a JSON file and a Markdown page (device, driver, versions, every figure, pass/fail). With
`--dry-run` it runs the same code on the CPU at tiny sizes (tests/test_gpu_check.py runs it in CI), so the
script is known to work before GPU time is spent:

    python benchmarks/gpu_check.py --out docs/gpu-check.md            # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check.md  # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from train_step import bare_loop

from seglab.bench import bench
from seglab.config import BenchConfig, ExportConfig, TestConfig, TrainConfig
from seglab.data.base import build_dataset
from seglab.engine import distributed
from seglab.engine.schedule import build_scheduler
from seglab.engine.setup import build_data, build_run
from seglab.engine.signals import StopFlag
from seglab.engine.train import train_one_epoch, train_step
from seglab.evaluation import test
from seglab.export import export, onnx_session
from seglab.models import build_model
from seglab.runs import RunDir, read_metrics

AMP_TOLERANCE = 0.10  # bf16/fp16 loss after N steps within 10% of fp32's
RESUME_TOLERANCE = 1e-4  # relative, per step, on CUDA (cuDNN kernels are not bit-reproducible)


@dataclass
class Settings:
    """Sizes of the check: the real ones on a GPU, tiny ones for --dry-run on a CPU."""

    device: torch.device
    dry_run: bool
    crop: int
    batch: int
    steps: int
    workers: tuple[int, ...]
    images: int
    workdir: Path
    skip: frozenset[str] = frozenset()
    figures: dict = field(default_factory=dict)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def train_config(s: Settings, basenet: str, decoder: str, **changes) -> TrainConfig:
    """A synthetic-data run of `s.crop` px crops, no evaluation or checkpoints inside the timed steps;
    `changes` set other fields (or override these)."""
    batch = changes.get("batch_size", s.batch)
    fields = {
        "basenet": basenet,
        "decoder": decoder,
        "pretrained": "none",
        "dataset": "synthetic",
        "dataset_options": {"length": 4 * batch, "size": s.crop},
        "crop": [s.crop],
        "batch_size": batch,
        "iters": 100 * s.steps,
        "workers": 0,
        "log_every": 10**6,
        "eval_every": 0,
        "ckpt_every": 10**6,
        "keep": 0,
        "runs_root": str(s.workdir / "runs"),
        "device": s.device.type,
    }
    return TrainConfig(**{**fields, **changes})


def time_steps(cfg: TrainConfig, steps: int) -> dict:
    """Build a run and time `steps` optimizer steps on in-memory batches; return img/s, peak memory, losses."""
    info = distributed.init(cfg.device)
    run = build_run(cfg, {}, info, None, StopFlag())
    batches = list(run.data.loader)
    outcome = train_step(run.net, run.opt, batches[0], run.stop, info, 0)  # warm-up (and compile)
    sync(info.device)
    reset_peak(info.device)
    losses, start = [outcome.loss], time.perf_counter()
    for i in range(1, steps + 1):
        losses.append(train_step(run.net, run.opt, batches[i % len(batches)], run.stop, info, i).loss)
    sync(info.device)
    seconds = time.perf_counter() - start
    run.monitor.close()
    return {
        "images_per_s": steps * cfg.batch_size / seconds,
        "peak_memory_mb": peak_memory_mb(info.device),
        "final_loss": losses[-1],
        "first_loss": losses[0],
        "amp": run.cfg.amp,
    }


def check_train_amp(s: Settings) -> dict:
    """Each model at --amp off, bf16 and fp16; bf16/fp16 must end within AMP_TOLERANCE of fp32's loss (on the
    CPU of a dry run, 2 steps of batch 2 say little about precision: only a gross drift fails there)."""
    tolerance = 0.5 if s.dry_run else AMP_TOLERANCE
    out, drifted = {}, []
    for basenet, decoder in (("resnet18", "fcn8s"), ("resnet50", "deeplabv3")):
        results = {
            amp: time_steps(train_config(s, basenet, decoder, amp=amp), s.steps) for amp in ("off", "bf16", "fp16")
        }
        reference = results["off"]["final_loss"]
        for amp in ("bf16", "fp16"):
            drift = abs(results[amp]["final_loss"] - reference) / max(abs(reference), 1e-12)
            results[amp]["loss_drift_vs_fp32"] = drift
            if not drift <= tolerance:
                drifted.append(
                    f"{basenet} x {decoder} --amp {amp}: loss {results[amp]['final_loss']:.4f} drifts "
                    f"{drift:.1%} from fp32's {reference:.4f} (tolerance {tolerance:.0%})"
                )
        out[f"{basenet}_{decoder}"] = results
    s.figures["train_images_per_s"] = out["resnet18_fcn8s"]["bf16"]["images_per_s"]
    if drifted:
        raise AssertionError("; ".join(drifted))
    return out


def check_engine_overhead(s: Settings) -> dict:
    """seglab's train_one_epoch vs the bare loop of benchmarks/train_step.py, alternating rounds."""
    cfg = train_config(s, "resnet18", "fcn8s", amp="bf16")
    info = distributed.init(cfg.device)
    run = build_run(cfg, {}, info, None, StopFlag())
    batches = list(run.data.loader)
    rounds = [[batches[i % len(batches)] for i in range(s.steps)]] * 4
    torch.manual_seed(0)
    model = build_model("resnet18", "fcn8s", run.net.raw.num_classes).to(info.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learnrate, momentum=cfg.momentum)
    scheduler = build_scheduler(optimizer, "poly", 100 * s.steps)
    timings: dict[str, list[float]] = {"bare": [], "seglab": []}
    for i, steps in enumerate(rounds):  # round 0 warms up
        for name in ("bare", "seglab"):
            sync(info.device)
            start = time.perf_counter()
            if name == "bare":
                bare_loop(model, optimizer, scheduler, steps, info.device, run.opt.amp_dtype)
            else:
                train_one_epoch(run, steps)
            sync(info.device)
            if i:
                timings[name].append(len(steps) / (time.perf_counter() - start))
    run.monitor.close()
    bare, ours = statistics.median(timings["bare"]), statistics.median(timings["seglab"])
    return {"bare_steps_per_s": bare, "seglab_steps_per_s": ours, "ratio_seglab_over_bare": ours / bare}


def check_model_speed(s: Settings) -> dict:
    """Forward + backward of seglab's DeepLabV3-R50 (output stride 8) vs torchvision's, same input."""
    torch.manual_seed(0)
    ours = build_model("resnet50", "deeplabv3", 21, output_stride=8).to(s.device).train()
    reference = (
        torchvision.models.segmentation.deeplabv3_resnet50(
            weights=None, weights_backbone=None, aux_loss=False, num_classes=21
        )
        .to(s.device)
        .train()
    )
    x = torch.randn(s.batch, 3, s.crop, s.crop, device=s.device)
    times: dict[str, list[float]] = {"seglab": [], "torchvision": []}
    for i in range(4):
        for name, model, forward in (("seglab", ours, ours), ("torchvision", reference, lambda t: reference(t)["out"])):
            model.zero_grad(set_to_none=True)
            sync(s.device)
            start = time.perf_counter()
            with torch.autocast(s.device.type, dtype=torch.bfloat16):
                forward(x).float().mean().backward()
            sync(s.device)
            if i:
                times[name].append((time.perf_counter() - start) * 1e3)
    a, b = statistics.median(times["seglab"]), statistics.median(times["torchvision"])
    return {"seglab_ms": a, "torchvision_ms": b, "ratio_seglab_over_torchvision": a / b}


def voc_like_folder(root: Path, count: int) -> Path:
    """Write a `folder` dataset of `count` random 500x375 JPEGs with index-PNG labels (VOC-like sizes)."""
    rng = np.random.default_rng(0)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(["background", *[f"c{i}" for i in range(1, 21)]]) + "\n")
    ids = [f"im{i:05d}" for i in range(count)]
    for name in ids:
        image = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=90)
        label = Image.fromarray(rng.integers(0, 21, (375, 500), dtype=np.uint8), mode="L")
        label.save(root / "SegmentationClass" / f"{name}.png")
    for split in ("train", "val"):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def check_data_pipeline(s: Settings) -> dict:
    """Images/s of seglab's training loader alone, by worker count, against the training step's rate."""
    root = voc_like_folder(s.workdir / "voc-like", s.images)
    out = {}
    for workers in s.workers:
        cfg = TrainConfig(
            dataset="folder",
            data_root=str(root),
            crop=[s.crop],
            batch_size=s.batch,
            workers=workers,
            iters=10**6,
            pretrained="none",
            device=s.device.type,
        )
        info = distributed.init(cfg.device)
        train_set = build_dataset("folder", root, "train")
        raw = build_model(cfg.basenet, cfg.decoder, train_set.num_classes)
        data = build_data(cfg, info, train_set, train_set, raw)
        start, images = time.perf_counter(), 0
        for batch in data.loader:
            images += len(batch["index"])
            if images >= s.images:
                break
        out[f"workers_{workers}"] = images / (time.perf_counter() - start)
    step_rate = s.figures.get("train_images_per_s")
    out["training_step_images_per_s"] = step_rate
    if step_rate is not None:
        out["gpu_waits_on_data_with"] = [k for k, v in out.items() if k.startswith("workers_") and v < step_rate]
    return out


def check_channels_last_and_compile(s: Settings) -> dict:
    out = {}
    for name, changes in (("eager", {}), ("channels_last", {"channels_last": True}), ("compile", {"compile": True})):
        if name == "compile" and "compile" in s.skip:
            out[name] = "skipped (--skip compile)"
            continue
        out[name] = time_steps(train_config(s, "resnet18", "fcn8s", amp="bf16", **changes), s.steps)
    return out


# Transformer and modern-CNN basenets with the decoders they are paired with; the dry run uses their smallest
# family members so that the CPU check stays short.
MODERN = {
    "convnext_upernet": (("convnext_tiny", "convnext_atto"), "upernet"),
    "swin_upernet": (("swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224"), "upernet"),
    "vit_segformer": (("vit_small_patch16_224", "vit_tiny_patch16_224"), "segformer"),
}
WORKFLOW = {"aux_weight": 0.4, "loss": "ce+dice", "accumulate": 2, "ema": 0.999, "clip_grad": 1.0}
"""The training features of a modern recipe, all on at once in `modern_models`."""


def check_modern_models(s: Settings) -> dict:
    """ConvNeXt and Swin with UPerNet, a ViT with SegFormer, at --amp bf16 with the auxiliary head, ce+dice,
    2 accumulation passes, EMA and clipping on: images/s, peak memory, finite losses."""
    out, bad = {}, []
    for name, ((basenet, dry_basenet), decoder) in MODERN.items():
        # At least 2 images per accumulation pass: UPerNet's pyramid pooling normalizes 1x1 maps with BatchNorm.
        batch = max(s.batch, 2 * WORKFLOW["accumulate"])
        cfg = train_config(s, dry_basenet if s.dry_run else basenet, decoder, amp="bf16", batch_size=batch, **WORKFLOW)
        result = time_steps(cfg, s.steps)
        out[name] = {"basenet": cfg.basenet, "decoder": decoder, **result}
        if not all(np.isfinite([result["first_loss"], result["final_loss"]])):
            bad.append(f"{cfg.basenet} x {decoder}: loss {result['first_loss']} -> {result['final_loss']}")
    out["workflow"] = WORKFLOW
    if bad:
        raise AssertionError("; ".join(bad))
    return out


def seglab_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "seglab.cli", *args]


def check_kill_resume(s: Settings) -> dict:
    """SIGKILL `seglab train` after a few checkpointed steps, resume it, compare with an uninterrupted run."""
    runs = s.workdir / "resume"
    total = max(6, s.steps)
    common = [
        "train",
        "--basenet",
        "resnet18",
        "--decoder",
        "fcn8s",
        "--pretrained",
        "none",
        "--dataset-options",
        f"length={4 * s.batch}",
        f"size={s.crop}",
        "--crop",
        str(s.crop),
        "--batch-size",
        str(s.batch),
        "--iters",
        str(total),
        "--log-every",
        "1",
        "--eval-every",
        "0",
        "--ckpt-every",
        "1",
        "--workers",
        "0",
        "--device",
        s.device.type,
        "--runs-root",
        str(runs),
    ]
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    subprocess.run(seglab_cli(*common, "--run-name", "whole"), check=True, env=env, capture_output=True)
    child = subprocess.Popen(
        seglab_cli(*common, "--run-name", "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    killed = RunDir(runs / "killed")
    deadline = time.monotonic() + 600
    while child.poll() is None and time.monotonic() < deadline:
        if killed.metrics.is_file() and len(read_metrics(killed.metrics, torn_tail_ok=True)) >= total // 2:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    child.wait()
    killed_at = max((step for step, _ in killed.step_files()), default=0)
    subprocess.run(seglab_cli("train", "--resume", str(killed.path)), check=True, env=env, capture_output=True)
    whole = [r["loss"] for r in read_metrics(RunDir(runs / "whole").metrics)]
    resumed = [r["loss"] for r in read_metrics(killed.metrics)]
    if len(whole) != len(resumed):
        raise AssertionError(f"the resumed run logged {len(resumed)} steps, the uninterrupted run {len(whole)}")
    worst = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(whole, resumed, strict=True))
    tolerance = 0.0 if s.device.type == "cpu" else RESUME_TOLERANCE
    if worst > tolerance:
        raise AssertionError(
            f"resumed losses differ by {worst:.3g} (relative) from the uninterrupted run's; tolerance {tolerance:g}"
        )
    s.figures["run"] = str(killed.path)
    return {
        "steps": total,
        "killed_after_checkpoint": killed_at,
        "max_relative_loss_difference": worst,
        "tolerance": tolerance,
        "bit_exact": worst == 0.0,
    }


def check_test_bench_export(s: Settings) -> dict:
    run = s.figures.get("run")
    if run is None:
        raise AssertionError("kill_resume did not leave a run to test, bench and export")
    outcome = test(TestConfig(run=run, device=s.device.type, workers=0, bootstrap=100, limit=8))
    rows = bench(
        BenchConfig(
            runs=[run],
            size=[s.crop],
            backends=["eager", "channels_last", "onnxruntime"],
            device=s.device.type,
            warmup=1,
            repeats=3,
        )
    )
    info = export(ExportConfig(run=run))
    providers = ["CUDAExecutionProvider"] if s.device.type == "cuda" else ["CPUExecutionProvider"]
    try:
        session = onnx_session(Path(run) / "export" / info["onnx"], providers=providers)
        used = session.get_providers()
    except Exception as err:  # onnxruntime-gpu not installed or no CUDA provider: recorded, not fatal
        used = [f"unavailable: {type(err).__name__}: {err}"]
    return {
        "test_miou": outcome.summary["miou"],
        "bench_median_ms": {r["backend"]: r["median_ms"] for r in rows},
        "export_max_abs_diff": max(c["max_abs_diff"] for c in info["checks"]),
        "onnxruntime_providers": used,
    }


STEPS: dict[str, Callable[[Settings], dict]] = {
    "train_amp": check_train_amp,
    "engine_overhead": check_engine_overhead,
    "model_speed": check_model_speed,
    "data_pipeline": check_data_pipeline,
    "channels_last_and_compile": check_channels_last_and_compile,
    "modern_models": check_modern_models,
    "kill_resume": check_kill_resume,
    "test_bench_export": check_test_bench_export,
}


def environment(device: torch.device) -> dict:
    """Return what the figures were measured on."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "device": "cpu",
        "driver": None,
    }
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
        try:
            env["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as err:
            env["driver"] = f"unknown ({err})"
    return env


def run_checks(s: Settings) -> dict:
    """Run every step, each timed and independent; return the JSON-ready record."""
    record = {"dry_run": s.dry_run, "environment": environment(s.device), "steps": {}}
    for name, check in STEPS.items():
        if name in s.skip:
            record["steps"][name] = {"status": "skipped"}
            continue
        start = time.perf_counter()
        try:
            result = {"status": "pass", **check(s)}
        except Exception as err:  # one failing step must not stop the others: it is recorded with its traceback
            result = {"status": "fail", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        result["seconds"] = time.perf_counter() - start
        record["steps"][name] = result
        print(f"[gpu-check] {name}: {result['status']} ({result['seconds']:.1f} s)", flush=True)
    return record


def markdown(record: dict) -> str:
    """Return the Markdown page of a check: environment, then every step's figures and status."""
    env = record["environment"]
    lines = [
        "# seglab GPU check" + (" (dry run on the CPU: no GPU figures)" if record["dry_run"] else ""),
        "",
        f"Device: {env['device']}; driver {env['driver']}; torch {env['torch']} (CUDA {env['cuda']}), "
        f"torchvision {env['torchvision']}, Python {env['python']}.",
        "",
        "Produced by `python benchmarks/gpu_check.py" + (" --dry-run" if record["dry_run"] else "") + "`.",
        "",
    ]
    for name, result in record["steps"].items():
        lines += [f"## {name}: {result['status']}", ""]
        body = {k: v for k, v in result.items() if k not in ("status", "traceback")}
        lines += ["```json", json.dumps(body, indent=2, default=str), "```", ""]
        if result["status"] == "fail":
            lines += ["```", result["traceback"].rstrip(), "```", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/gpu-check.md"), help="Markdown page (JSON beside it)")
    parser.add_argument("--dry-run", action="store_true", help="run the same code on the CPU at tiny sizes")
    parser.add_argument("--skip", default="", help="comma-separated steps (or 'compile') to leave out")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 20; dry run 2)")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --dry-run to exercise the script on the CPU", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="seglab-gpu-check-") as workdir:
        dry = args.dry_run
        settings = Settings(
            device=torch.device("cpu" if dry else "cuda"),
            dry_run=dry,
            crop=64 if dry else 512,
            batch=2 if dry else 8,
            steps=args.steps or (2 if dry else 20),
            workers=(0, 2) if dry else (0, 4, 8, 16),
            images=8 if dry else 256,
            workdir=Path(workdir),
            skip=frozenset(t.strip() for t in args.skip.split(",") if t.strip()),
        )
        record = run_checks(settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(record))
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0 if all(r["status"] != "fail" for r in record["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
