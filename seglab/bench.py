"""`seglab bench`: parameters, GFLOPs and measured latency of basenet x decoder pairs or of trained runs.

Every backend times the same computation, `seglab.engine.inference.DeployModel` (uint8 images in, logits out):
PyTorch eager, eager in channels-last memory format, `torch.compile`, ONNX Runtime running the graph
`seglab export` writes (exported here at the benchmark's fixed shape), and ONNX Runtime running that graph
quantized to INT8 the way `seglab export --int8` quantizes it (`seglab.quantize`; calibrated here on the
timed batch, since latency does not depend on the calibrated ranges; CPU only). Each timing is the median
over `repeats` runs after `warmup` runs, with the interquartile range and min/max as spread; on a GPU the
PyTorch backends are timed with CUDA events. Weights are random (pretrained=None): latency does not depend
on their values. Results print as a table and can be written as CSV (one row per backend) and Markdown.
"""

from __future__ import annotations

import copy
import csv
import io
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from seglab import tables
from seglab.config import BENCH_BACKENDS, BenchConfig
from seglab.deployed import EXPORT_INFO, INPUT_NAME, OUTPUT_NAME, onnx_session
from seglab.engine.checkpoint import load_run
from seglab.engine.distributed import resolve_device
from seglab.engine.inference import DeployModel
from seglab.errors import ConfigError
from seglab.export import export_onnx
from seglab.models import basenet_spec, build_model
from seglab.models.complexity import model_complexity
from seglab.plugins import load_plugins, optional_import
from seglab.quantize import quantize_onnx
from seglab.runs import RunDir, atomic_write, ensure_dir, evaluated_runs, read_json

MIOU_COLUMN = "mIoU % (95% CI)"
TOP1_COLUMN = "ImageNet top-1 %"
INT8_COLUMN = "INT8 - fp32 mIoU, points (95% CI)"
ONNX_BACKENDS = ("onnxruntime", "onnxruntime-int8")


@dataclass(frozen=True)
class Latency:
    """Milliseconds per forward pass of one batch: median, quartiles, extremes, and the number of repeats."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    repeats: int


def summarize_times(times_ms: Sequence[float]) -> Latency:
    """Return the median, quartiles (inclusive method) and extremes of per-repeat times in ms."""
    if not times_ms:
        raise ValueError("no timings to summarize: repeats must be at least 1")
    if len(times_ms) == 1:
        q1 = q3 = times_ms[0]
    else:
        q1, _, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
    return Latency(statistics.median(times_ms), q1, q3, min(times_ms), max(times_ms), len(times_ms))


def measure(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device) -> Latency:
    """Time `fn` `repeats` times after `warmup` untimed calls; CUDA events on a GPU, perf_counter on CPU."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return summarize_times(times)


def backend_runner(
    model: nn.Module, backend: str, images: torch.Tensor, device: torch.device, workdir: Path, threads: int
) -> Callable[[], object]:
    """Return a no-argument callable that runs one forward pass of `model` on `images` with `backend`."""
    if backend not in BENCH_BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BENCH_BACKENDS)}")
    if backend == "onnxruntime-int8" and device.type == "cuda":
        raise ConfigError(
            "backend onnxruntime-int8 runs on the CPU: ONNX Runtime's CUDA provider has no INT8 kernels for "
            "QDQ models; use --device cpu or leave onnxruntime-int8 out of --backends"
        )
    if backend in ONNX_BACKENDS:
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            ort = optional_import("onnxruntime", "onnx", "backend onnxruntime")
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError(
                    "backend onnxruntime on cuda needs onnxruntime-gpu (the installed onnxruntime "
                    "has only " + ", ".join(ort.get_available_providers()) + "); "
                    "install it or leave onnxruntime out of --backends"
                )
            providers = ["CUDAExecutionProvider"]
        n, _, h, w = images.shape
        path = export_onnx(copy.deepcopy(model).cpu(), workdir / f"{backend}.onnx", static_shape=(n, h, w))
        if backend == "onnxruntime-int8":
            path = quantize_onnx(path, workdir / f"{backend}-int8.onnx", lambda _: images.cpu(), 1)
        session = onnx_session(path, threads, providers)
        feed = {INPUT_NAME: images.cpu().numpy()}
        return lambda: session.run([OUTPUT_NAME], feed)
    deploy = DeployModel(copy.deepcopy(model)).to(device).eval()
    x = images.to(device)
    if backend == "channels_last":
        deploy = deploy.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if backend == "compile":
        deploy = torch.compile(deploy)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return deploy(x)

    return run


def bench_model(
    model: nn.Module,
    *,
    size: tuple[int, int],
    batch: int,
    backends: Sequence[str],
    device: torch.device,
    warmup: int,
    repeats: int,
    threads: int,
) -> dict[str, Latency]:
    """Return the latency of `model` per backend on a batch of random uint8 images of `size`."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, generator=generator)
    results = {}
    with tempfile.TemporaryDirectory(prefix="seglab-bench-") as workdir:
        for backend in backends:
            run = backend_runner(model, backend, images, device, Path(workdir), threads)
            # ONNX Runtime returns host arrays after its own synchronization: wall-clock timing fits it.
            clock = torch.device("cpu") if backend in ONNX_BACKENDS else device
            results[backend] = measure(run, warmup, repeats, clock)
    return results


def bench_rows(
    models: Sequence[tuple[str, str, Callable[[], nn.Module]]],
    *,
    size: tuple[int, int],
    batch: int,
    backends: Sequence[str],
    device: torch.device,
    warmup: int,
    repeats: int,
    threads: int,
) -> list[dict]:
    """Benchmark each (basenet, decoder, build) entry; return one CSV-ready row per model and backend."""
    rows = []
    for basenet, decoder, build in models:
        model = build().eval()
        measured = model_complexity(model, size)
        params, gflops = measured["params"], measured["gflops"]
        latencies = bench_model(
            model,
            size=size,
            batch=batch,
            backends=backends,
            device=device,
            warmup=warmup,
            repeats=repeats,
            threads=threads,
        )
        for backend, latency in latencies.items():
            rows.append(
                {
                    "basenet": basenet,
                    "decoder": decoder,
                    "height": size[0],
                    "width": size[1],
                    "batch": batch,
                    "params": params,
                    "gflops": round(gflops, 3),
                    "backend": backend,
                    "device": device_name(device),
                    "threads": threads,
                    "warmup": warmup,
                    **{k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(latency).items()},
                }
            )
        del model
    return rows


def device_name(device: torch.device) -> str:
    """Return 'cpu' or the GPU's name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _cell(row: dict) -> str:
    return f"{row['median_ms']:.1f} ({row['q1_ms']:.1f}-{row['q3_ms']:.1f})"


def wide_table(rows: Sequence[dict], extra: dict[tuple[str, str], dict[str, str]] | None = None) -> list[list[str]]:
    """Pivot rows to one line per model: params (M), GFLOPs, one latency column per backend, extra columns.

    `extra` maps (basenet, decoder) to additional {column: text} (e.g. mIoU and ImageNet top-1).
    """
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    extra = extra or {}
    extra_columns = list(dict.fromkeys(c for cols in extra.values() for c in cols))
    first = rows[0] if rows else {"height": 0, "width": 0, "batch": 0}
    header = [
        "basenet",
        "decoder",
        "params (M)",
        f"GFLOPs @ {first['height']}x{first['width']}",
        *[f"{b} ms" for b in backends],
        *extra_columns,
    ]
    models = list(dict.fromkeys((r["basenet"], r["decoder"]) for r in rows))
    table = [header]
    for key in models:
        by_backend = {r["backend"]: r for r in rows if (r["basenet"], r["decoder"]) == key}
        any_row = next(iter(by_backend.values()))
        gflops = any_row["gflops"]
        gflops_text = f"{gflops:.1f}" if gflops >= 1 else f"{gflops:.2g}"
        table.append(
            [
                key[0],
                key[1],
                f"{any_row['params'] / 1e6:.2f}",
                gflops_text,
                *[_cell(by_backend[b]) if b in by_backend else "-" for b in backends],
                *[extra.get(key, {}).get(c, "-") for c in extra_columns],
            ]
        )
    return table


def format_markdown(table: Sequence[Sequence[str]]) -> str:
    """Render a header + rows table as GitHub Markdown (two text columns left, numbers right)."""
    return tables.markdown(table[0], table[1:], left=2)


def format_text(table: Sequence[Sequence[str]]) -> str:
    """Render a header + rows table as aligned plain text for the terminal."""
    return tables.text(table[0], table[1:], left=2)


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Write rows of dicts (one column per key of the first row) as CSV, atomically."""
    path = Path(path)
    ensure_dir(path.parent, "--csv")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, text.getvalue())


def conditions(rows: Sequence[dict]) -> str:
    """Return the one-line statement of what was measured (device, threads, batch, repeats, versions)."""
    onnxruntime = optional_import("onnxruntime", "onnx", "seglab bench")

    r = rows[0]
    int8 = any(row["backend"] == "onnxruntime-int8" for row in rows)
    precision = "fp32 (onnxruntime-int8: the INT8 QDQ model of `seglab export --int8`)" if int8 else "fp32"
    return (
        f"latency: median (interquartile range) in ms over {r['repeats']} runs after {r['warmup']} warm-up "
        f"runs, batch {r['batch']}, {r['height']}x{r['width']} uint8 input, {precision}, device {r['device']}, "
        f"{r['threads']} CPU threads; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )


def percent_cell(value: float | None) -> str:
    """Return a value already in percent with one decimal ('-' when unknown)."""
    return "-" if value is None or value != value else f"{value:.1f}"


def latest_eval(runs_root: str | Path, basenet: str, decoder: str, dataset: str = "") -> dict | None:
    """Return the newest `seglab test` metrics of a (basenet, decoder) run under `runs_root` (None if none).

    `dataset` restricts to evaluations on that dataset. The result adds "run" and "metrics_file".
    """
    found = []
    for run, runargs, evaluation, summary in evaluated_runs(runs_root):
        if runargs.get("basenet") != basenet or runargs.get("decoder") != decoder:
            continue
        if not dataset or summary.get("dataset", {}).get("name") == dataset:
            found.append((evaluation.metrics.stat().st_mtime, run, evaluation, summary))
    if not found:
        return None
    _, run, evaluation, summary = max(found, key=lambda t: t[0])
    return {**summary, "run": str(run.path), "metrics_file": str(evaluation.metrics)}


def result_columns(runs_root: str | Path, basenet: str, decoder: str, dataset: str = "") -> dict[str, str]:
    """Return the mIoU and ImageNet top-1 cells of the README table for one pair ('no run' without a run)."""
    top1 = basenet_spec(basenet).imagenet_top1()
    summary = latest_eval(runs_root, basenet, decoder, dataset)
    if summary is None:
        miou = "no run"
    else:
        low, high = summary["miou_ci"]
        miou = (
            f"{percent_cell(100 * summary['miou'])} ({percent_cell(None if low is None else 100 * low)}-"
            f"{percent_cell(None if high is None else 100 * high)}), {summary['dataset']['name']} "
            f"{summary['dataset']['split']}"
        )
    return {MIOU_COLUMN: miou, TOP1_COLUMN: percent_cell(top1.top1) if top1 else "-"}


def int8_columns(run: RunDir | None) -> dict[str, str]:
    """Return the cell of the mIoU change INT8 - fp32 that `seglab export --int8` measured for a run."""
    info_file = run.export_dir / EXPORT_INFO if run is not None else None
    if info_file is None or not info_file.is_file():
        return {INT8_COLUMN: "not exported"}
    verification = (read_json(info_file, "run `seglab export --int8` again").get("int8") or {}).get("verification")
    if not verification:
        return {INT8_COLUMN: "no --int8 export"}
    diff = verification["miou_diff"]
    low, high = diff["ci"]
    return {
        INT8_COLUMN: f"{100 * diff['diff']:+.2f} ({100 * low:+.2f} to {100 * high:+.2f}), {verification['images']} "
        f"{verification['dataset']} {verification['split']} images"
    }


def bench(cfg: BenchConfig) -> list[dict]:
    """Benchmark the runs or the grid `cfg` names, print the table and write --csv / --md; return the rows."""
    load_plugins(cfg.plugins)
    threads = cfg.threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        device = resolve_device(cfg.device)
        int8 = {}
        if cfg.runs:
            models = []
            for run in cfg.runs:
                loaded = load_run(run)
                models.append((loaded.config.basenet, loaded.config.decoder, lambda model=loaded.model: model))
                int8[(loaded.config.basenet, loaded.config.decoder)] = int8_columns(loaded.run)
        else:
            models = [
                (b, d, lambda b=b, d=d: build_model(b, d, cfg.num_classes)) for b in cfg.basenets for d in cfg.decoders
            ]
        rows = bench_rows(
            models,
            size=tuple(cfg.size),
            batch=cfg.batch_size,
            backends=cfg.backends,
            device=device,
            warmup=cfg.warmup,
            repeats=cfg.repeats,
            threads=threads,
        )
    finally:
        torch.set_num_threads(previous)
    extra = {(b, d): {} for b, d, _ in models}
    if cfg.miou_from:
        for b, d, _ in models:
            extra[(b, d)].update(result_columns(cfg.miou_from, b, d, cfg.miou_dataset))
    if "onnxruntime-int8" in cfg.backends:  # for runs, the accuracy cost their INT8 export measured
        for key, columns in int8.items():
            extra[key].update(columns)
    table = wide_table(rows, extra)
    print(format_text(table))
    print(conditions(rows))
    if cfg.csv:
        write_csv(rows, cfg.csv)
        print(f"wrote {cfg.csv}")
    if cfg.md:
        ensure_dir(Path(cfg.md).parent, "--md")
        atomic_write(Path(cfg.md), format_markdown(table) + "\n\n" + conditions(rows) + "\n")
        print(f"wrote {cfg.md}")
    return rows
