"""`seglab test` as a library call: choose a run's checkpoint(s), evaluate each on a dataset split, write the
evaluation folder (metrics.json, per_image_cm.npz) and the report.

`test(TestConfig(run=...))` is what the command runs, and what `seglab study` calls for every run. Under
`torchrun` every process evaluates a share of the images (`seglab.engine.evaluate`) and rank 0 writes.
A checkpoint's EMA weights are evaluated where it has them, unless `--no-ema`. An exported .onnx file
(fp32 or INT8) is evaluated the same way, through ONNX Runtime (`seglab.deployed`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from seglab import metrics
from seglab.config import InferenceOptions, TestConfig, TrainConfig
from seglab.corruptions import CorruptedDataset, corruption_names, robustness_summary
from seglab.data.base import SegmentationDataset, build_dataset
from seglab.deployed import OnnxModel, graph_precision, is_onnx, load_onnx, onnx_device
from seglab.engine import distributed
from seglab.engine.checkpoint import load_run
from seglab.engine.evaluate import EvalResult, checkpoint_spread, evaluate, summarize
from seglab.engine.setup import AMP_DTYPES, resolve_amp
from seglab.errors import ConfigError, PathError
from seglab.models.complexity import model_complexity
from seglab.plugins import load_plugins
from seglab.report import gallery_items, write_report
from seglab.runs import EvalDir, Target, choose_checkpoints


def inference_name(options: InferenceOptions) -> list[str]:
    """Return the parts of an evaluation name that the test-time options add (ms..., flip, sw...)."""
    parts = []
    if tuple(options.scales) != (1.0,):
        parts.append("ms" + ",".join(f"{s:g}" for s in options.scales))
    if options.flip:
        parts.append("flip")
    if options.sliding_window:
        parts.append(f"sw{options.sliding_window}")
    return parts


def default_eval_name(cfg: TestConfig, single: Target | None) -> str:
    """Return the evaluation folder name: the split, the test options and a single non-`last` checkpoint file
    (an exported model: onnx-fp32 or onnx-int8)."""
    parts = [cfg.split, *inference_name(cfg)]
    if not cfg.ema:
        parts.append("noema")
    if single is not None and is_onnx(single):
        parts.append(f"onnx-{graph_precision(single.checkpoint)}")
    elif single is not None and single.checkpoint == Path(cfg.run) and single.name != "last":
        parts.append(single.name)
    return "-".join(parts)


def eval_dir(cfg: TestConfig, targets: list[Target] | None = None) -> EvalDir:
    """Return where `seglab test` with `cfg` writes: --out, else RUN/eval/NAME."""
    if cfg.out:
        return EvalDir(Path(cfg.out))
    targets = targets if targets is not None else choose_checkpoints(cfg.run, cfg.checkpoints, cfg.last_k)
    run = targets[0].run
    if run is None:
        raise PathError(f"{targets[0].checkpoint} is not inside a run's checkpoints/ or export/ folder: give --out DIR")
    return run.eval_dir(cfg.eval_name or default_eval_name(cfg, targets[0] if len(targets) == 1 else None))


def model_info(model: torch.nn.Module, config: TrainConfig) -> dict:
    """Return basenet, decoder, parameters and GFLOPs (at the run's training crop, else 512x512); for an
    exported model, those its export recorded, with its format, precision and file."""
    if isinstance(model, OnnxModel):
        recorded = model.info.get("model") or {"basenet": config.basenet, "decoder": config.decoder}
        return {**recorded, "format": "onnx", "precision": model.precision, "file": str(model.path)}
    crop = config.crop or [512, 512]
    size = (crop[0], crop[-1])
    complexity = model_complexity(model, size=size)
    return {
        "basenet": config.basenet,
        "decoder": config.decoder,
        "params": int(complexity["params"]),
        "gflops": float(complexity["gflops"]),
        "gflops_size": list(size),
    }


def test_dataset(cfg: TestConfig, run_config: TrainConfig) -> SegmentationDataset:
    """Return the dataset split to evaluate: --dataset/--data-root, else the run's own (with its options)."""
    name = cfg.dataset or run_config.dataset
    # the run's dataset options (e.g. synthetic length/size) apply only to the run's own dataset
    options = run_config.dataset_options if name == run_config.dataset else {}
    return build_dataset(name, cfg.data_root or run_config.data_root or None, cfg.split, **options)


def corruption_results(
    model: torch.nn.Module, dataset: SegmentationDataset, cfg: TestConfig, options: dict, info: distributed.DistInfo
) -> list[dict]:
    """Evaluate `model` under each corruption and severity of `cfg` with the evaluation `options` of the clean
    pass (every rank takes part under torchrun); return one record per corruption and severity (rank 0)."""
    results = []
    for name in corruption_names(cfg.corruptions):
        for severity in cfg.severities:
            res = evaluate(model, CorruptedDataset(dataset, name, severity), gallery=0, **options)
            if not info.is_main:
                continue
            scores = metrics.segmentation_metrics(res.cm, list(res.class_names))
            boot = metrics.bootstrap_miou(res.per_image, resamples=cfg.bootstrap, seed=cfg.seed)
            results.append(
                {
                    "corruption": name,
                    "severity": severity,
                    "miou": scores["miou"],
                    "miou_ci": boot["miou_ci"],
                    "per_class_iou": scores["per_class_iou"],
                }
            )
            print(f"{name} severity {severity}: mIoU {100 * scores['miou']:.2f}")
    return results


@dataclass
class TestOutcome:
    """What `test` wrote: the evaluation folder, its summary (metrics.json) and the first checkpoint's result."""

    __test__ = False  # not a pytest test class

    eval_dir: EvalDir
    summary: dict
    result: EvalResult


def test(cfg: TestConfig) -> TestOutcome | None:
    """Evaluate the checkpoint(s) `cfg` names; write metrics.json, per_image_cm.npz, report.html and report.md.

    Each checkpoint's mIoU with its CI is printed; with several, their spread is recorded. Under torchrun
    the processes share the images; ranks other than 0 write nothing and return None.
    """
    load_plugins(cfg.plugins)
    info = distributed.init(cfg.device)
    try:
        return _test(cfg, info)
    finally:
        distributed.cleanup()


def _say(info: distributed.DistInfo, text: str) -> None:
    if info.is_main:
        print(text, flush=True)


def _test(cfg: TestConfig, info: distributed.DistInfo) -> TestOutcome | None:
    if is_onnx(cfg.run) and (cfg.checkpoints or cfg.last_k is not None):
        raise ConfigError(f"{cfg.run} is an exported model: --checkpoints and --last-k choose checkpoints of a run")
    targets = choose_checkpoints(cfg.run, cfg.checkpoints, cfg.last_k)
    out = eval_dir(cfg, targets)
    device = info.device
    amp = resolve_amp(cfg.amp, device)
    if is_onnx(cfg.run):
        first = load_onnx(targets[0].checkpoint, onnx_device(cfg.device))  # one target: no other checkpoints
    else:
        first = load_run(targets[0], device, ema=cfg.ema)
    dataset = test_dataset(cfg, first.config)
    dataset_name = cfg.dataset or first.config.dataset
    options = {
        "scales": cfg.scales,
        "flip": cfg.flip,
        "window": cfg.sliding_window,
        "window_step": cfg.window_step,
        "limit": cfg.limit,
        "dilation_ratio": cfg.boundary_ratio,
        "workers": cfg.workers,
        "batch_size": cfg.batch_size,
        "pad_batches": cfg.pad_batches,
        "amp_dtype": AMP_DTYPES[amp],
        "rank": info.rank,
        "world_size": info.world_size,
    }
    spread, summary, result = [], {}, None
    for i, target in enumerate(targets):
        loaded = first if i == 0 else load_run(target, device, ema=cfg.ema)
        if cfg.channels_last:
            loaded.model.to(memory_format=torch.channels_last)
        if loaded.weights == "ema":
            _say(
                info,
                f"{target.name}: evaluating the EMA weights (--ema {loaded.config.ema}); --no-ema for the trained ones",
            )
        started = time.perf_counter()
        res = evaluate(loaded.model, dataset, gallery=cfg.gallery if i == 0 else 0, **options)
        seconds = time.perf_counter() - started
        if not info.is_main:
            continue
        if i == 0:
            result = res
            summary = summarize(res, bootstrap=cfg.bootstrap, seed=cfg.seed, size_bins=cfg.size_bins)
            entry = {"miou": summary["miou"], "miou_ci": summary["miou_ci"]}
        else:
            boot = metrics.bootstrap_miou(res.per_image, resamples=cfg.bootstrap, seed=cfg.seed)
            miou = float(metrics.pooled_miou(res.per_image))
            entry = {"miou": None if miou != miou else miou, "miou_ci": boot["miou_ci"]}
        spread.append({"checkpoint": target.name, "step": loaded.step, "weights": loaded.weights, **entry})
        low, high = entry["miou_ci"]
        print(
            f"{target.name}: mIoU {100 * entry['miou']:.2f} (95% CI {100 * low:.2f}-{100 * high:.2f}) on "
            f"{len(res.image_ids)} images of {dataset_name} {cfg.split}; {len(res.image_ids) / seconds:.1f} images/s "
            f"(batch {cfg.batch_size}, amp {amp}{', channels-last' if cfg.channels_last else ''}, "
            f"{info.world_size} x {device})"
        )
    corrupted = corruption_results(first.model, dataset, cfg, options, info) if cfg.corruptions else None
    if not info.is_main:
        return None
    summary["checkpoint_spread"] = checkpoint_spread(spread) if len(spread) > 1 else None
    if corrupted is not None:
        summary["corruptions"] = robustness_summary(summary["miou"], corrupted)
    summary["model"] = {**model_info(first.model, first.config), "weights": first.weights}
    summary["dataset"] = {"name": dataset_name, "split": cfg.split}
    summary["test_options"] = {
        "scales": list(cfg.scales),
        "flip": cfg.flip,
        "window": cfg.sliding_window,
        "window_step": cfg.window_step,
        "batch_size": cfg.batch_size,
        "pad_batches": cfg.pad_batches,
        "amp": amp,
        "channels_last": cfg.channels_last,
    }
    out.write(summary, result.arrays())
    html, md = write_report(out.path, summary, gallery_items(dataset, result), dataset.palette)
    print(f"wrote {out.metrics}, {md} and {html}")
    return TestOutcome(out, summary, result)
