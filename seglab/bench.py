"""`seglab bench`: parameters, GFLOPs and measured latency of FE x decoder pairs or of trained runs.

Every backend times the same computation, `seglab.export.DeployModel` (uint8 images in, logits out):
PyTorch eager, eager in channels-last memory format, `torch.compile`, and ONNX Runtime running the
graph `seglab export` writes (exported here at the benchmark's fixed shape). Each timing is the median
over `repeats` runs after `warmup` runs, with the interquartile range and min/max as spread; on a GPU the
PyTorch backends are timed with CUDA events. Weights are random (pretrained=None): latency does not depend
on their values. Results print as a table and can be written as CSV (one row per backend) and Markdown.
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from seglab.export import INPUT_NAME, OUTPUT_NAME, DeployModel, export_onnx, onnx_session
from seglab.models.backbones import SEED_BASENETS
from seglab.models.summary import count_gflops, count_params

BACKENDS = ("eager", "channels_last", "compile", "onnxruntime")
DEFAULT_BACKENDS = ("eager", "channels_last", "onnxruntime")


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


def backend_runner(model: nn.Module, backend: str, images: torch.Tensor, device: torch.device,
                   workdir: Path, threads: int) -> Callable[[], object]:
    """Return a no-argument callable that runs one forward pass of `model` on `images` with `backend`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("backend onnxruntime on cuda needs onnxruntime-gpu (the installed onnxruntime "
                                   "has only " + ", ".join(ort.get_available_providers()) + "); "
                                   "install it or leave onnxruntime out of --backends")
            providers = ["CUDAExecutionProvider"]
        n, _, h, w = images.shape
        path = export_onnx(copy.deepcopy(model).cpu(), workdir / "model.onnx", static_shape=(n, h, w))
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


def complexity(model: nn.Module, size: tuple[int, int]) -> tuple[int, float]:
    """Return (parameters, GFLOPs for one image of `size`), FLOPs counted on a meta-device copy."""
    meta = copy.deepcopy(model).to("meta")
    return count_params(model), count_gflops(meta, size)


def bench_model(model: nn.Module, *, size: tuple[int, int], batch: int, backends: Sequence[str],
                device: torch.device, warmup: int, repeats: int, threads: int) -> dict[str, Latency]:
    """Return the latency of `model` per backend on a batch of random uint8 images of `size`."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, generator=generator)
    results = {}
    with tempfile.TemporaryDirectory(prefix="seglab-bench-") as workdir:
        for backend in backends:
            run = backend_runner(model, backend, images, device, Path(workdir), threads)
            # ONNX Runtime returns host arrays after its own synchronization: wall-clock timing fits it.
            clock = torch.device("cpu") if backend == "onnxruntime" else device
            results[backend] = measure(run, warmup, repeats, clock)
    return results


def bench_rows(models: Sequence[tuple[str, str, Callable[[], nn.Module]]], *, size: tuple[int, int], batch: int,
               backends: Sequence[str], device: torch.device, warmup: int, repeats: int,
               threads: int) -> list[dict]:
    """Benchmark each (basenet, decoder, build) entry; return one CSV-ready row per model and backend."""
    rows = []
    for basenet, decoder, build in models:
        model = build().eval()
        params, gflops = complexity(model, size)
        latencies = bench_model(model, size=size, batch=batch, backends=backends, device=device,
                                warmup=warmup, repeats=repeats, threads=threads)
        for backend, latency in latencies.items():
            rows.append({"basenet": basenet, "decoder": decoder, "height": size[0], "width": size[1],
                         "batch": batch, "params": params, "gflops": round(gflops, 3), "backend": backend,
                         "device": device_name(device), "threads": threads, "warmup": warmup,
                         **{k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(latency).items()}})
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
    header = ["basenet", "decoder", "params (M)", f"GFLOPs @ {first['height']}x{first['width']}",
              *[f"{b} ms" for b in backends], *extra_columns]
    models = list(dict.fromkeys((r["basenet"], r["decoder"]) for r in rows))
    table = [header]
    for key in models:
        by_backend = {r["backend"]: r for r in rows if (r["basenet"], r["decoder"]) == key}
        any_row = next(iter(by_backend.values()))
        gflops = any_row["gflops"]
        gflops_text = f"{gflops:.1f}" if gflops >= 1 else f"{gflops:.2g}"
        table.append([key[0], key[1], f"{any_row['params'] / 1e6:.2f}", gflops_text,
                      *[_cell(by_backend[b]) if b in by_backend else "-" for b in backends],
                      *[extra.get(key, {}).get(c, "-") for c in extra_columns]])
    return table


def format_markdown(table: Sequence[Sequence[str]]) -> str:
    """Render a header + rows table as GitHub Markdown (text columns left, numbers right)."""
    header, *body = table
    align = ["---" if i < 2 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def format_text(table: Sequence[Sequence[str]]) -> str:
    """Render a header + rows table as aligned plain text for the terminal."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths,
                                                                                                  strict=True)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path: str | Path) -> None:
    """Write the long-format rows (one per model and backend) as CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def conditions(rows: Sequence[dict]) -> str:
    """Return the one-line statement of what was measured (device, threads, batch, repeats, versions)."""
    import onnxruntime

    r = rows[0]
    return (f"latency: median (interquartile range) in ms over {r['repeats']} runs after {r['warmup']} warm-up "
            f"runs, batch {r['batch']}, {r['height']}x{r['width']} uint8 input, fp32, device {r['device']}, "
            f"{r['threads']} CPU threads; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `seglab bench`."""
    parser.add_argument("runs", nargs="*", type=Path, metavar="RUN",
                        help="run folders or checkpoints to benchmark (default: the --basenets x --decoders grid)")
    parser.add_argument("--basenets", type=_csv_list, default=list(SEED_BASENETS),
                        help="comma-separated FEs (default: the seed FEs)")
    parser.add_argument("--decoders", type=_csv_list, default=["fcn8s"], help="comma-separated decoders "
                        "(default fcn8s)")
    parser.add_argument("--num-classes", type=int, default=21, help="classes of the grid models (default 21)")
    parser.add_argument("--size", type=int, nargs="+", default=[512], metavar="S",
                        help="input size: S (square) or H W (default 512)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    parser.add_argument("--backends", type=_csv_list, default=list(DEFAULT_BACKENDS),
                        help=f"comma-separated, from {', '.join(BACKENDS)} (default {','.join(DEFAULT_BACKENDS)})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default cuda when available)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads for PyTorch and ONNX Runtime (default torch.get_num_threads())")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs (default 10)")
    parser.add_argument("--miou-from", type=Path, default=None, metavar="RUNS_ROOT",
                        help="add mIoU (95%% CI) and ImageNet top-1 columns: the newest evaluated run of each "
                             "pair under RUNS_ROOT, 'no run' where none exists")
    parser.add_argument("--miou-dataset", default=None, metavar="NAME",
                        help="with --miou-from: only evaluations on this dataset (e.g. voc; default any)")
    parser.add_argument("--csv", type=Path, default=None, help="write one row per model and backend here")
    parser.add_argument("--md", type=Path, default=None, help="write the Markdown table here")


def _size(values: list[int]) -> tuple[int, int]:
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ValueError(f"--size takes S or H W, got {len(values)} numbers")


def main(args: argparse.Namespace) -> int:
    """Run `seglab bench`; a bad flag value or run is reported in one line (exit code 1)."""
    from seglab.engine.checkpoint import CheckpointError

    try:
        return bench_run(args)
    except (CheckpointError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"seglab bench: error: {err}", file=sys.stderr)
        return 1


def bench_run(args: argparse.Namespace) -> int:
    """Benchmark the runs or the grid and print / write the tables."""
    from seglab.models import build_model

    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if "compile" in args.backends and args.warmup < 1:
        raise ValueError("--backends compile needs --warmup 1 or more, so that compiling is not timed")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.runs:
        from seglab.engine.checkpoint import load_model

        models = []
        for run in args.runs:
            model, runargs = load_model(run)
            models.append((runargs["basenet"], runargs["decoder"], lambda model=model: model))
    else:
        models = [(b, d, lambda b=b, d=d: build_model(b, d, args.num_classes))
                  for b in args.basenets for d in args.decoders]
    rows = bench_rows(models, size=_size(args.size), batch=args.batch, backends=args.backends, device=device,
                      warmup=args.warmup, repeats=args.repeats, threads=args.threads)
    extra = None
    if args.miou_from is not None:
        from seglab.study import result_columns

        extra = {(b, d): result_columns(args.miou_from, b, d, args.miou_dataset) for b, d, _ in models}
    table = wide_table(rows, extra)
    print(format_text(table))
    print(conditions(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(format_markdown(table) + "\n\n" + conditions(rows) + "\n")
        print(f"wrote {args.md}")
    return 0
