"""`seglab study`: train and evaluate an FE x decoder grid from one YAML file, then tabulate and plot.

The study answers the seed's question "is ImageNet accuracy a good predictor of segmentation accuracy?"
with measured numbers. For every (basenet, decoder) pair it trains a run with the shared `train` settings
(`seglab train`'s engine, in-process), evaluates it with `seglab test` (mIoU with a bootstrap 95% CI over
images), measures params, GFLOPs and latency (`seglab bench`), and looks up the FE's ImageNet top-1
(`seglab.imagenet_top1`). It writes results.csv, results.md, two scatter plots (mIoU vs ImageNet top-1,
mIoU vs GFLOPs) and prints Spearman rank correlations (scipy.stats.spearmanr), per decoder and overall.

Run folders are `<out>/runs/<basenet>_<decoder>/`; a pair whose run is already evaluated is not
trained again, and an unfinished run is resumed, so an interrupted study continues where it stopped.

YAML layout (only `basenets` and `decoders` are required)::

    basenets: [resnet18, mobilenet_v2]
    decoders: [fcn8s, fcnw]
    train: {dataset: voc, data_root: data/VOCdevkit/VOC2012, iters: 30000}   # TrainConfig keys
    test: {split: val, flip: false, bootstrap: 1000}                          # `seglab test` flags
    bench: {size: 512, batch: 1, backends: [eager], repeats: 10}            # `seglab bench` settings
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

STUDY_KEYS = ("basenets", "decoders", "train", "test", "bench")
SET_BY_STUDY = ("basenet", "decoder", "runs_root", "run_name", "resume")
BENCH_DEFAULTS = {"size": 512, "batch": 1, "backends": ["eager"], "warmup": 2, "repeats": 10, "threads": 0,
                  "device": "cpu"}
PRETRAINED_WITH_TOP1 = ("imagenet", "package", "hub")
MIOU_COLUMN = "mIoU % (95% CI)"
TOP1_COLUMN = "ImageNet top-1 %"


@dataclass
class StudyConfig:
    """A parsed study YAML: the grid, the shared training config keys, test flags and bench settings."""

    basenets: list[str]
    decoders: list[str]
    train: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    bench: dict = field(default_factory=dict)


def read_study(path: str | Path) -> StudyConfig:
    """Read and check a study YAML; errors name the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with keys {', '.join(STUDY_KEYS)}")
    unknown = sorted(set(data) - set(STUDY_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {', '.join(unknown)}; a study has {', '.join(STUDY_KEYS)}")
    for key in ("basenets", "decoders"):
        value = data.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{path}: {key!r} must be a non-empty list of names, got {value!r}")
    for key in ("train", "test", "bench"):
        if not isinstance(data.get(key, {}), dict):
            raise ValueError(f"{path}: {key!r} must be a mapping, got {data[key]!r}")
    fixed = sorted(set(data.get("train", {})) & set(SET_BY_STUDY))
    if fixed:
        raise ValueError(f"{path}: train.{', train.'.join(fixed)} cannot be set: the study sets them per run")
    unknown = sorted(set(data.get("bench", {})) - set(BENCH_DEFAULTS))
    if unknown:
        raise ValueError(f"{path}: unknown bench keys {', '.join(unknown)}; known: {', '.join(BENCH_DEFAULTS)}")
    return StudyConfig(data["basenets"], data["decoders"], data.get("train", {}), data.get("test", {}),
                       {**BENCH_DEFAULTS, **data.get("bench", {})})


def test_argv(run_dir: Path, test: dict) -> list[str]:
    """Turn the study's `test` mapping into `seglab test` arguments for `run_dir`."""
    argv = [str(run_dir)]
    for key, value in test.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def parse_test_args(run_dir: Path, test: dict, source: str) -> argparse.Namespace:
    """Return the `seglab test` namespace for `run_dir`; unknown test keys are an error naming `source`."""
    from seglab.engine import evaluate

    parser = argparse.ArgumentParser(prog="seglab test", exit_on_error=False)
    evaluate.add_arguments(parser)
    args, extra = parser.parse_known_args(test_argv(run_dir, test))
    if extra:
        raise ValueError(f"{source}: test keys not understood by `seglab test`: {' '.join(extra)}")
    return args


def train_run(study: StudyConfig, basenet: str, decoder: str, runs_root: Path, source: str) -> Path:
    """Train the run of one pair, or resume it when its folder exists; return its folder."""
    from seglab import config as cfg_mod
    from seglab.engine.train import train

    run_dir = runs_root / f"{basenet}_{decoder}"
    keys = {**study.train, "basenet": basenet, "decoder": decoder, "runs_root": str(runs_root)}
    if run_dir.exists():
        if not (run_dir / "checkpoints" / "last.pt").is_file():
            raise RuntimeError(f"{run_dir} exists without checkpoints/last.pt (a run that died before its first "
                               "checkpoint): delete the folder and run the study again")
        keys["resume"] = str(run_dir)
    else:
        keys["run_name"] = run_dir.name
    cfg = cfg_mod.from_dict(keys, source)
    # Resuming checks these keys against the run's checkpoint, so an edited study YAML is refused, not ignored
    # (`resume` itself must be among them: it names the folder the resumed run writes to).
    code = train(cfg, explicit={k: getattr(cfg, k) for k in keys})
    if code != 0:
        raise RuntimeError(f"training {basenet} x {decoder} stopped with exit code {code}; run the study again to "
                           f"resume it ({run_dir})")
    return run_dir


def metrics_path(run_dir: Path, test: dict, source: str) -> Path:
    """Return where `seglab test` with the study's test settings writes the run's metrics.json."""
    from seglab.engine import evaluate

    args = parse_test_args(run_dir, test, source)
    return run_dir / "eval" / (args.name or evaluate.default_name(args, None)) / "metrics.json"


def evaluate_run(run_dir: Path, test: dict, source: str) -> Path:
    """Evaluate a run with `seglab test`; return its metrics.json."""
    from seglab.engine import evaluate

    evaluate.main(parse_test_args(run_dir, test, source))
    return metrics_path(run_dir, test, source)


def measure_run(run_dir: Path, bench: dict) -> dict:
    """Return params, GFLOPs and per-backend latency of a run's model with the study's bench settings."""
    from seglab.bench import bench_model, complexity
    from seglab.engine.checkpoint import load_model

    model, _ = load_model(run_dir)
    size = (bench["size"], bench["size"]) if isinstance(bench["size"], int) else tuple(bench["size"])
    threads = bench["threads"] or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        params, gflops = complexity(model, size)
        latency = bench_model(model, size=size, batch=bench["batch"], backends=bench["backends"],
                              device=torch.device(bench["device"]), warmup=bench["warmup"],
                              repeats=bench["repeats"], threads=threads)
    finally:
        torch.set_num_threads(previous)
    return {"params": params, "gflops": gflops, "threads": threads,
            "latency": {b: lat.median_ms for b, lat in latency.items()},
            "latency_iqr": {b: (lat.q1_ms, lat.q3_ms) for b, lat in latency.items()}}


def result_row(basenet: str, decoder: str, run_dir: Path, metrics_file: Path, measured: dict) -> dict:
    """Return one results.csv row: mIoU and CI (%), complexity, latency per backend, ImageNet top-1."""
    from seglab.imagenet_top1 import imagenet_top1

    summary = json.loads(metrics_file.read_text())
    low, high = summary["miou_ci"]
    runargs = yaml.safe_load((run_dir / "runargs.yaml").read_text()) or {}
    # The figure describes the weights `--pretrained imagenet` loads; other starts (none, a file) have none.
    top1 = imagenet_top1(basenet) if runargs.get("pretrained") in PRETRAINED_WITH_TOP1 else None
    row = {"basenet": basenet, "decoder": decoder, "miou": 100 * summary["miou"],
           "miou_ci_low": None if low is None else 100 * low, "miou_ci_high": None if high is None else 100 * high,
           "params": measured["params"], "gflops": measured["gflops"], "pretrained": runargs.get("pretrained")}
    for backend, median in measured["latency"].items():
        q1, q3 = measured["latency_iqr"][backend]
        row.update({f"latency_ms_{backend}": median, f"latency_q1_ms_{backend}": q1, f"latency_q3_ms_{backend}": q3})
    row.update({"threads": measured["threads"], "imagenet_top1": top1.top1 if top1 else None,
                "imagenet_weights": top1.weights if top1 else None,
                "eval": f"{summary['dataset']['name']} {summary['dataset']['split']}",
                "run": str(run_dir)})
    return row


def spearman(rows: list[dict], x: str, y: str = "miou") -> dict:
    """Return Spearman's rank correlation of column `y` with `x` over rows where both are known."""
    from scipy.stats import spearmanr

    pairs = [(r[x], r[y]) for r in rows if r.get(x) is not None and r.get(y) is not None]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return {"n": len(pairs), "rho": None, "p": None}
    result = spearmanr([p[0] for p in pairs], [p[1] for p in pairs])
    return {"n": len(pairs), "rho": float(result.statistic), "p": float(result.pvalue)}


def correlations(rows: list[dict]) -> dict:
    """Return Spearman correlations of mIoU with ImageNet top-1 and with GFLOPs, overall and per decoder."""
    groups = {"all": rows, **{f"decoder {d}": [r for r in rows if r["decoder"] == d]
                              for d in dict.fromkeys(r["decoder"] for r in rows)}}
    return {name: {"imagenet_top1": spearman(group, "imagenet_top1"), "gflops": spearman(group, "gflops")}
            for name, group in groups.items()}


def correlation_text(corr: dict) -> list[str]:
    """Return one printable line per group with both rank correlations."""

    def fmt(c: dict) -> str:
        if c["rho"] is None:
            return f"n/a (n={c['n']}; needs 3 or more distinct values)"
        return f"rho {c['rho']:+.2f} (p {c['p']:.2g}, n={c['n']})"

    return [f"Spearman, mIoU vs ImageNet top-1, {name}: {fmt(c['imagenet_top1'])}; vs GFLOPs: {fmt(c['gflops'])}"
            for name, c in corr.items()]


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def markdown_table(rows: list[dict]) -> str:
    """Render the results as a Markdown table."""
    backends = [k.removeprefix("latency_ms_") for k in rows[0] if k.startswith("latency_ms_")]
    header = ["basenet", "decoder", MIOU_COLUMN, "params (M)", "GFLOPs", *[f"{b} ms" for b in backends],
              TOP1_COLUMN, "eval"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 3) + "---|"]
    for r in rows:
        cells = [r["basenet"], r["decoder"], f"{_pct(r['miou'])} ({_pct(r['miou_ci_low'])}-{_pct(r['miou_ci_high'])})",
                 f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.3g}",
                 *[f"{r[f'latency_ms_{b}']:.1f}" for b in backends], _pct(r["imagenet_top1"]), r["eval"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scatter(rows: list[dict], x: str, xlabel: str, path: Path) -> Path:
    """Plot mIoU (with CI bars) against column `x`, one colour per decoder, points labelled by basenet."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), dpi=120)
    ax = fig.add_subplot()
    if not any(r.get(x) is not None for r in rows):
        ax.text(0.5, 0.5, f"no run has a known value of {x}", ha="center", va="center", transform=ax.transAxes)
    for decoder in dict.fromkeys(r["decoder"] for r in rows):
        pts = [r for r in rows if r["decoder"] == decoder and r.get(x) is not None]
        if not pts:
            continue
        ys = [r["miou"] for r in pts]
        err = [[r["miou"] - (r["miou_ci_low"] if r["miou_ci_low"] is not None else r["miou"]) for r in pts],
               [(r["miou_ci_high"] if r["miou_ci_high"] is not None else r["miou"]) - r["miou"] for r in pts]]
        ax.errorbar([r[x] for r in pts], ys, yerr=err, fmt="o", capsize=3, label=decoder)
        for r in pts:
            ax.annotate(r["basenet"], (r[x], r["miou"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("segmentation mIoU % (95% CI)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="decoder", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_results(rows: list[dict], out: Path) -> dict:
    """Write results.csv, results.md, the two plots and correlations.json; return the correlations."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    corr = correlations(rows)
    (out / "correlations.json").write_text(json.dumps(corr, indent=2) + "\n")
    (out / "results.md").write_text(markdown_table(rows) + "\n\n" + "\n".join(f"- {t}" for t in
                                                                              correlation_text(corr)) + "\n")
    scatter(rows, "imagenet_top1", "ImageNet-1k top-1 % of the FE's pretrained weights", out / "miou_vs_top1.png")
    scatter(rows, "gflops", "GFLOPs per image", out / "miou_vs_gflops.png")
    return corr


def run_study(config_path: str | Path, out: str | Path) -> list[dict]:
    """Train, evaluate and measure every pair of the study, write the results under `out`; return the rows."""
    study = read_study(config_path)
    out = Path(out)
    rows = []
    pairs = [(b, d) for b in study.basenets for d in study.decoders]
    for i, (basenet, decoder) in enumerate(pairs, start=1):
        print(f"[study {i}/{len(pairs)}] {basenet} x {decoder}", flush=True)
        run_dir = out / "runs" / f"{basenet}_{decoder}"
        metrics_file = metrics_path(run_dir, study.test, str(config_path))
        if metrics_file.is_file():
            print(f"  {run_dir} is trained and evaluated: reusing {metrics_file}", flush=True)
        else:
            train_run(study, basenet, decoder, out / "runs", str(config_path))
            evaluate_run(run_dir, study.test, str(config_path))
        rows.append(result_row(basenet, decoder, run_dir, metrics_file, measure_run(run_dir, study.bench)))
    corr = write_results(rows, out)
    print(markdown_table(rows))
    for line in correlation_text(corr):
        print(line)
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'miou_vs_top1.png'}, "
          f"{out / 'miou_vs_gflops.png'}")
    return rows


def latest_eval(runs_root: Path, basenet: str, decoder: str, dataset: str | None = None) -> dict | None:
    """Return the newest `seglab test` metrics of a (basenet, decoder) run under `runs_root` (None if none).

    `dataset` restricts to evaluations on that dataset. The result adds "run" and "metrics_file".
    """
    found = []
    for runargs_file in Path(runs_root).glob("**/runargs.yaml"):
        runargs = yaml.safe_load(runargs_file.read_text()) or {}
        if runargs.get("basenet") != basenet or runargs.get("decoder") != decoder:
            continue
        for metrics_file in runargs_file.parent.glob("eval/*/metrics.json"):
            summary = json.loads(metrics_file.read_text())
            if dataset is None or summary.get("dataset", {}).get("name") == dataset:
                found.append((metrics_file.stat().st_mtime, metrics_file, summary))
    if not found:
        return None
    _, metrics_file, summary = max(found, key=lambda t: t[0])
    return {**summary, "run": str(metrics_file.parent.parent.parent), "metrics_file": str(metrics_file)}


def result_columns(runs_root: Path, basenet: str, decoder: str, dataset: str | None = None) -> dict[str, str]:
    """Return the mIoU and ImageNet top-1 cells of the README table for one pair ('no run' without a run)."""
    from seglab.imagenet_top1 import imagenet_top1

    top1 = imagenet_top1(basenet)
    summary = latest_eval(runs_root, basenet, decoder, dataset)
    if summary is None:
        miou = "no run"
    else:
        low, high = summary["miou_ci"]
        miou = (f"{_pct(100 * summary['miou'])} ({_pct(None if low is None else 100 * low)}-"
                f"{_pct(None if high is None else 100 * high)}), {summary['dataset']['name']} "
                f"{summary['dataset']['split']}")
    return {MIOU_COLUMN: miou, TOP1_COLUMN: _pct(top1.top1) if top1 else "-"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `seglab study`."""
    parser.add_argument("config", type=Path, help="study YAML (basenets, decoders, train, test, bench)")
    parser.add_argument("--out", type=Path, default=None, help="study folder (default studies/<config name>)")


def main(args: argparse.Namespace) -> int:
    """Run `seglab study`; a bad study file or a failed run is reported in one line (exit code 1)."""
    from seglab.engine.checkpoint import CheckpointError
    from seglab.engine.train import TrainingError

    try:
        run_study(args.config, args.out or Path("studies") / args.config.stem)
    except (TrainingError, CheckpointError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"seglab study: error: {err}", file=sys.stderr)
        return 1
    return 0
