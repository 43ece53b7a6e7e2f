"""`seglab study`: train and evaluate a basenet x decoder grid from one YAML file, then tabulate and plot.

The study answers the seed's question "is ImageNet accuracy a good predictor of segmentation accuracy?"
with measured numbers. For every (basenet, decoder) pair it trains a run with the shared `train` settings
(`seglab train`'s engine, in-process), evaluates it with `seglab test` (mIoU with a bootstrap 95% CI over
images), measures params, GFLOPs and latency (`seglab bench`), and looks up the basenet's ImageNet top-1
(its `BasenetSpec`). It writes results.csv, results.md, two scatter plots (mIoU vs ImageNet top-1,
mIoU vs GFLOPs) and prints Spearman rank correlations (scipy.stats.spearmanr), per decoder and overall.

Run folders are `<out>/runs/<basenet>_<decoder>/`; a pair whose run is already evaluated is not
trained again, and an unfinished run is resumed, so an interrupted study continues where it stopped.

YAML layout (only `basenets` and `decoders` are required); each section is checked by the dataclass of
its command, so an unknown key or a bad value is an error naming the file and the key::

    basenets: [resnet18, mobilenet_v2]
    decoders: [fcn8s, fcnw]
    train: {dataset: voc, data_root: data/VOCdevkit/VOC2012, iters: 30000}   # TrainConfig keys
    test: {split: val, flip: false, bootstrap: 1000}                          # TestConfig keys
    bench: {size: [512], batch_size: 1, backends: [eager], repeats: 10}     # BenchConfig keys
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from seglab import config as cfg_mod
from seglab import tables
from seglab.bench import MIOU_COLUMN, TOP1_COLUMN, bench_model, percent_cell, write_csv
from seglab.config import BenchConfig, StudyConfig, TestConfig, TrainConfig, check_study
from seglab.engine.checkpoint import load_run
from seglab.engine.distributed import resolve_device
from seglab.engine.train import train
from seglab.errors import TrainingError
from seglab.evaluation import default_eval_name, test
from seglab.models import basenet_spec
from seglab.models.complexity import model_complexity
from seglab.plugins import load_plugins
from seglab.runs import RunDir, atomic_write, ensure_dir

PRETRAINED_WITH_TOP1 = ("imagenet", "package", "hub")


def read_study(path: str | Path) -> StudyConfig:
    """Read and check a study YAML; errors name the file and the offending key."""
    return check_study(cfg_mod.from_dict(StudyConfig, cfg_mod.load_yaml(path, "study file"), str(path)), str(path))


def train_run(study: StudyConfig, basenet: str, decoder: str, runs_root: Path, source: str) -> RunDir:
    """Train the run of one pair, or resume it when its folder exists; return its folder."""
    run = RunDir(runs_root / f"{basenet}_{decoder}")
    keys = {
        **study.train,
        "basenet": basenet,
        "decoder": decoder,
        "runs_root": str(runs_root),
        "plugins": [*study.train.get("plugins", []), *study.plugins],
    }
    if run.path.exists():
        if not run.last.is_file():
            raise TrainingError(
                f"{run.path} exists without checkpoints/last.pt (a run that died before its first "
                "checkpoint): delete the folder and run the study again"
            )
        keys["resume"] = str(run.path)
    else:
        keys["run_name"] = run.name
    cfg = cfg_mod.from_dict(TrainConfig, keys, source)
    # Resuming checks these keys against the run's checkpoint, so an edited study YAML is refused, not ignored.
    code = train(cfg, explicit=keys)
    if code != 0:
        raise TrainingError(
            f"training {basenet} x {decoder} stopped with exit code {code}; run the study again to "
            f"resume it ({run.path})"
        )
    return run


def test_config(study: StudyConfig, run: RunDir, source: str) -> TestConfig:
    """Return the `seglab test` config of one run from the study's `test` section."""
    return cfg_mod.from_dict(TestConfig, {**study.test, "run": str(run.path)}, source)


def bench_config(study: StudyConfig, source: str) -> BenchConfig:
    """Return the `seglab bench` settings of the study (BenchConfig defaults, the `bench` section on top)."""
    return cfg_mod.from_dict(BenchConfig, study.bench, source)


def measure_run(run: RunDir, bench: BenchConfig) -> dict:
    """Return params, GFLOPs and per-backend latency of a run's model with the study's bench settings."""
    model = load_run(run.path).model
    size = tuple(bench.size)
    threads = bench.threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        measured = model_complexity(model, size)
        latency = bench_model(
            model,
            size=size,
            batch=bench.batch_size,
            backends=bench.backends,
            device=resolve_device(bench.device),
            warmup=bench.warmup,
            repeats=bench.repeats,
            threads=threads,
        )
    finally:
        torch.set_num_threads(previous)
    return {
        "params": measured["params"],
        "gflops": measured["gflops"],
        "threads": threads,
        "latency": {b: lat.median_ms for b, lat in latency.items()},
        "latency_iqr": {b: (lat.q1_ms, lat.q3_ms) for b, lat in latency.items()},
    }


def result_row(basenet: str, decoder: str, run: RunDir, summary: dict, measured: dict) -> dict:
    """Return one results.csv row: mIoU and CI (%), complexity, latency per backend, ImageNet top-1."""
    low, high = summary["miou_ci"]
    pretrained = run.read_runargs().get("pretrained")
    # The figure describes the weights `--pretrained imagenet` loads; other starts (none, a file) have none.
    top1 = basenet_spec(basenet).imagenet_top1() if pretrained in PRETRAINED_WITH_TOP1 else None
    row = {
        "basenet": basenet,
        "decoder": decoder,
        "miou": 100 * summary["miou"],
        "miou_ci_low": None if low is None else 100 * low,
        "miou_ci_high": None if high is None else 100 * high,
        "params": measured["params"],
        "gflops": measured["gflops"],
        "pretrained": pretrained,
    }
    for backend, median in measured["latency"].items():
        q1, q3 = measured["latency_iqr"][backend]
        row.update({f"latency_ms_{backend}": median, f"latency_q1_ms_{backend}": q1, f"latency_q3_ms_{backend}": q3})
    row.update(
        {
            "threads": measured["threads"],
            "imagenet_top1": top1.top1 if top1 else None,
            "imagenet_weights": top1.weights if top1 else None,
            "eval": f"{summary['dataset']['name']} {summary['dataset']['split']}",
            "run": str(run.path),
        }
    )
    return row


def spearman(rows: list[dict], x: str, y: str = "miou") -> dict:
    """Return Spearman's rank correlation of column `y` with `x` over rows where both are known."""
    pairs = [(r[x], r[y]) for r in rows if r.get(x) is not None and r.get(y) is not None]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return {"n": len(pairs), "rho": None, "p": None}
    result = spearmanr([p[0] for p in pairs], [p[1] for p in pairs])
    return {"n": len(pairs), "rho": float(result.statistic), "p": float(result.pvalue)}


def correlations(rows: list[dict]) -> dict:
    """Return Spearman correlations of mIoU with ImageNet top-1 and with GFLOPs, overall and per decoder."""
    groups = {
        "all": rows,
        **{f"decoder {d}": [r for r in rows if r["decoder"] == d] for d in dict.fromkeys(r["decoder"] for r in rows)},
    }
    return {
        name: {"imagenet_top1": spearman(group, "imagenet_top1"), "gflops": spearman(group, "gflops")}
        for name, group in groups.items()
    }


def correlation_text(corr: dict) -> list[str]:
    """Return one printable line per group with both rank correlations."""

    def fmt(c: dict) -> str:
        if c["rho"] is None:
            return f"n/a (n={c['n']}; needs 3 or more distinct values)"
        return f"rho {c['rho']:+.2f} (p {c['p']:.2g}, n={c['n']})"

    return [
        f"Spearman, mIoU vs ImageNet top-1, {name}: {fmt(c['imagenet_top1'])}; vs GFLOPs: {fmt(c['gflops'])}"
        for name, c in corr.items()
    ]


def markdown_table(rows: list[dict]) -> str:
    """Render the results as a Markdown table."""
    backends = [k.removeprefix("latency_ms_") for k in rows[0] if k.startswith("latency_ms_")]
    header = [
        "basenet",
        "decoder",
        MIOU_COLUMN,
        "params (M)",
        "GFLOPs",
        *[f"{b} ms" for b in backends],
        TOP1_COLUMN,
        "eval",
    ]
    body = [
        [
            r["basenet"],
            r["decoder"],
            f"{percent_cell(r['miou'])} ({percent_cell(r['miou_ci_low'])}-{percent_cell(r['miou_ci_high'])})",
            f"{r['params'] / 1e6:.2f}",
            f"{r['gflops']:.3g}",
            *[f"{r[f'latency_ms_{b}']:.1f}" for b in backends],
            percent_cell(r["imagenet_top1"]),
            r["eval"],
        ]
        for r in rows
    ]
    return tables.markdown(header, body, left=2)


def scatter(rows: list[dict], x: str, xlabel: str, path: Path) -> Path:
    """Plot mIoU (with CI bars) against column `x`, one colour per decoder, points labelled by basenet."""
    fig = Figure(figsize=(6, 4.5), dpi=120)
    ax = fig.add_subplot()
    if not any(r.get(x) is not None for r in rows):
        ax.text(0.5, 0.5, f"no run has a known value of {x}", ha="center", va="center", transform=ax.transAxes)
    for decoder in dict.fromkeys(r["decoder"] for r in rows):
        pts = [r for r in rows if r["decoder"] == decoder and r.get(x) is not None]
        if not pts:
            continue
        ys = [r["miou"] for r in pts]
        err = [
            [r["miou"] - (r["miou_ci_low"] if r["miou_ci_low"] is not None else r["miou"]) for r in pts],
            [(r["miou_ci_high"] if r["miou_ci_high"] is not None else r["miou"]) - r["miou"] for r in pts],
        ]
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
    ensure_dir(out, "--out")
    write_csv(rows, out / "results.csv")
    corr = correlations(rows)
    atomic_write(out / "correlations.json", json.dumps(corr, indent=2) + "\n")
    atomic_write(
        out / "results.md", markdown_table(rows) + "\n\n" + "\n".join(f"- {t}" for t in correlation_text(corr)) + "\n"
    )
    scatter(rows, "imagenet_top1", "ImageNet-1k top-1 % of the basenet's pretrained weights", out / "miou_vs_top1.png")
    scatter(rows, "gflops", "GFLOPs per image", out / "miou_vs_gflops.png")
    return corr


def run_study(study: StudyConfig, out: str | Path, source: str) -> list[dict]:
    """Train, evaluate and measure every pair of the study, write the results under `out`; return the rows.

    `source` names the study file in messages.
    """
    load_plugins(study.plugins)
    out = Path(out)
    bench = bench_config(study, source)
    rows = []
    pairs = [(b, d) for b in study.basenets for d in study.decoders]
    for i, (basenet, decoder) in enumerate(pairs, start=1):
        print(f"[study {i}/{len(pairs)}] {basenet} x {decoder}", flush=True)
        run = RunDir(out / "runs" / f"{basenet}_{decoder}")
        test_cfg = test_config(study, run, source)
        # the study's test section cannot set out, checkpoints or last_k: the folder is RUN/eval/NAME
        evaluation = run.eval_dir(test_cfg.eval_name or default_eval_name(test_cfg, None))
        if evaluation.exists():
            print(f"  {run.path} is trained and evaluated: reusing {evaluation.metrics}", flush=True)
        else:
            train_run(study, basenet, decoder, out / "runs", source)
            evaluation = test(test_cfg).eval_dir
        rows.append(result_row(basenet, decoder, run, evaluation.read_summary(), measure_run(run, bench)))
    corr = write_results(rows, out)
    print(markdown_table(rows))
    for line in correlation_text(corr):
        print(line)
    print(
        f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'miou_vs_top1.png'}, {out / 'miou_vs_gflops.png'}"
    )
    return rows
