"""`seglab compare`: runs side by side, per-class deltas, training curves, and a paired bootstrap over
images of each mIoU difference against the first run, so a +0.5% claim can be judged.

Every run must have been evaluated (`seglab test`) on the same images: the per-image class counts
saved there are resampled together (see `seglab.metrics.bootstrap`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from seglab import metrics
from seglab.config import CompareConfig
from seglab.errors import ConfigError, PathError
from seglab.report import ci_text, html_page, md_table, pct, png, png_uri, ratio_text
from seglab.runs import COUNTS, EvalDir, RunDir, atomic_write, ensure_dir, is_run, read_metrics


@dataclass
class EvaluatedRun:
    """One run's evaluation: its label, folders, metrics.json and per-image class counts [N, 3, C]."""

    label: str
    run_dir: Path | None
    eval_dir: Path
    summary: dict
    per_image: torch.Tensor
    image_ids: list[str]
    class_names: list[str]


def load_evaluation(path: Path, eval_name: str) -> EvaluatedRun:
    """Return the evaluation of a run folder (its eval/`eval_name`) or of an evaluation folder itself."""
    if EvalDir(path).exists():
        evaluation = EvalDir(path)
        run_dir = evaluation.run.path if evaluation.run is not None else None
        label = f"{run_dir.name}:{path.name}" if run_dir is not None else path.name  # two of one run may be compared
    elif path.is_dir() and is_run(path):
        evaluation = RunDir(path).eval_dir(eval_name)
        run_dir, label = path, path.name
        if not evaluation.exists():
            raise PathError(
                f"{evaluation.metrics} is missing: run `seglab test {path}` first "
                f"(or pass --eval-name NAME of an existing eval/ folder)"
            )
    elif path.exists():
        raise PathError(f"{path} is neither a run folder nor an evaluation folder (one holding metrics.json)")
    else:
        raise PathError(f"{path} does not exist: give run folders or evaluation folders")
    summary = evaluation.read_summary()
    arrays = evaluation.read_per_image()
    return EvaluatedRun(
        label,
        run_dir,
        evaluation.path,
        summary,
        torch.from_numpy(arrays[COUNTS]),
        [str(i) for i in arrays["image_ids"]],
        [str(c) for c in arrays["class_names"]],
    )


def aligned(base: EvaluatedRun, other: EvaluatedRun) -> torch.Tensor:
    """Return `other`'s per-image class counts in `base`'s image order; raise if the image sets differ."""
    if other.class_names != base.class_names:
        raise ConfigError(
            f"{other.eval_dir} has classes {other.class_names}, {base.eval_dir} has "
            f"{base.class_names}: runs on different label sets cannot be compared"
        )
    only_base = sorted(set(base.image_ids) - set(other.image_ids))
    only_other = sorted(set(other.image_ids) - set(base.image_ids))
    if only_base or only_other or len(set(other.image_ids)) != len(other.image_ids):
        raise ConfigError(
            f"{base.eval_dir} and {other.eval_dir} were evaluated on different image sets: "
            f"{len(only_base)} images only in the first (e.g. {only_base[:3]}), "
            f"{len(only_other)} only in the second (e.g. {only_other[:3]}); "
            "evaluate both on the same split without --limit differences"
        )
    position = {image: i for i, image in enumerate(other.image_ids)}
    return other.per_image[[position[image] for image in base.image_ids]]


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Return {key: [(step, value)]} of the numeric keys in a run's metrics.jsonl."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for record in read_metrics(RunDir(run_dir).metrics):
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                curves.setdefault(key, []).append((int(record["step"]), float(value)))
    return curves


def curves_figure(curves: dict[str, dict[str, list[tuple[int, float]]]]) -> bytes | None:
    """Return a PNG of training loss and validation mIoU per run, or None when no run has curves."""
    keys = ["loss", *sorted({k for c in curves.values() for k in c if "miou" in k})]
    keys = [k for k in keys if any(k in c for c in curves.values())]
    if not keys:
        return None
    fig = Figure(figsize=(5 * len(keys), 3.5))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for label, run_curves in curves.items():
            if key in run_curves:
                steps, values = zip(*run_curves[key], strict=True)
                ax.plot(steps, values, label=label)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return png(fig)


def _p_text(p: float, resamples: int) -> str:
    return f"< {1 / resamples:.3g}" if p <= 1 / resamples else f"{p:.3g}"


def compare(runs: list[EvaluatedRun], resamples: int = metrics.DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """Return the comparison: per-run metrics, per-class IoU deltas and paired bootstraps vs the first run."""
    if len(runs) < 2:
        raise ConfigError("compare needs at least two runs")
    base = runs[0]
    tests = []
    for other in runs[1:]:
        result = metrics.paired_bootstrap(aligned(base, other), base.per_image, resamples=resamples, seed=seed)
        tests.append({"run": other.label, "baseline": base.label, **result})
    deltas = {}
    for name in base.class_names:
        ref = base.summary["per_class_iou"][name]
        deltas[name] = [
            None if ref is None or r.summary["per_class_iou"][name] is None else r.summary["per_class_iou"][name] - ref
            for r in runs[1:]
        ]
    return {
        "runs": [
            {
                "label": r.label,
                "eval_dir": str(r.eval_dir),
                **{
                    k: r.summary.get(k)
                    for k in ("miou", "miou_ci", "pixel_acc", "mean_class_acc", "fw_iou", "dice", "model")
                },
                "boundary_miou": r.summary["boundary"]["miou"],
                "iiou": (r.summary.get("sizes") or {}).get("iiou"),
                **robustness_columns(r.summary),
            }
            for r in runs
        ],
        "paired_bootstrap": tests,
        "per_class_iou": base.summary["per_class_iou"],
        "per_class_iou_delta": deltas,
        "num_images": len(base.image_ids),
    }


def robustness_columns(summary: dict) -> dict:
    """Return a run's mean mIoU under corruption, relative robustness and what was corrupted (None without)."""
    corruptions = summary.get("corruptions") or {}
    return {
        "corrupted_miou": corruptions.get("mean_miou"),
        "relative_robustness": corruptions.get("relative_robustness"),
        "corruptions": [e["corruption"] for e in corruptions.get("per_corruption", [])] or None,
        "severities": corruptions.get("severities"),
    }


def markdown(result: dict, curves_src: str | None) -> str:
    """Return the comparison as Markdown; `curves_src` is the training-curves image (file or data URI)."""
    runs = result["runs"]
    lines = [
        f"# seglab compare: {' vs '.join(r['label'] for r in runs)}",
        "",
        f"All runs evaluated on the same {result['num_images']} images.",
        "",
    ]
    robust = any(r.get("corrupted_miou") is not None for r in runs)
    rows = []
    for r in runs:
        model = r.get("model") or {}
        extra = [pct(r.get("corrupted_miou"), 2), ratio_text(r.get("relative_robustness"))] if robust else []
        rows.append(
            [
                r["label"],
                model.get("basenet") or "?",
                model.get("decoder") or "?",
                pct(r["miou"], 2),
                ci_text(r["miou_ci"]),
                pct(r["pixel_acc"], 2),
                pct(r["mean_class_acc"], 2),
                pct(r["fw_iou"], 2),
                pct(r["dice"], 2),
                pct(r["boundary_miou"], 2),
                pct(r["iiou"], 2),
                *extra,
            ]
        )
    lines += md_table(
        [
            "run",
            "basenet",
            "decoder",
            "mIoU",
            "95% CI",
            "pixel acc",
            "mean class acc",
            "fw IoU",
            "Dice",
            "Boundary IoU",
            "iIoU",
            *(["mIoU under corruption", "relative robustness"] if robust else []),
        ],
        rows,
    )
    if robust:
        differ = {(tuple(r["corruptions"] or ()), tuple(r["severities"] or ())) for r in runs}
        note = (
            "the runs were corrupted differently (corruptions or severities differ): these columns do not compare"
            if len(differ) > 1
            else "mean over the corruptions and severities `seglab test --corruptions` evaluated"
        )
        lines += ["", f"mIoU under corruption: {note}; relative robustness = corrupted / clean mIoU."]
    lines += ["", "## mIoU difference vs the first run (paired bootstrap over images)", ""]
    test_rows = []
    for t in result["paired_bootstrap"]:
        low, high = t["ci"]
        verdict = ("yes" if low is not None and (low > 0 or high < 0) else "no") + f" (at {1 - t['level']:.0%})"
        test_rows.append(
            [
                f"{t['run']} - {t['baseline']}",
                f"{100 * t['diff']:+.2f}",
                f"{100 * low:+.2f} to {100 * high:+.2f}",
                _p_text(t["p_value"], t["resamples"]),
                verdict,
            ]
        )
    lines += md_table(["difference", "ΔmIoU (points)", "95% CI", "p-value (two-sided)", "significant"], test_rows)
    resamples = result["paired_bootstrap"][0]["resamples"]
    lines += ["", f"{resamples} paired resamples; the p-value cannot be resolved below 1/{resamples}.", ""]
    lines += ["## Per-class IoU", ""]
    header = ["class", runs[0]["label"], *(f"Δ {r['label']}" for r in runs[1:])]
    lines += md_table(
        header,
        [
            [name, pct(result["per_class_iou"][name]), *("–" if d is None else f"{100 * d:+.1f}" for d in deltas)]
            for name, deltas in result["per_class_iou_delta"].items()
        ],
    )
    if curves_src:
        lines += ["", "## Training curves", "", f"![training curves]({curves_src})"]
    return "\n".join(lines) + "\n"


def compare_runs(cfg: CompareConfig) -> Path:
    """Run `seglab compare`: print the comparison and write compare.md/.html/.json and curves.png; return
    the output folder."""
    runs = [load_evaluation(Path(path), cfg.eval_name) for path in cfg.runs]
    result = compare(runs, resamples=cfg.bootstrap, seed=cfg.seed)
    out_dir = Path(cfg.out) if cfg.out else Path("compare-" + "-vs-".join(r.label.replace(":", "_") for r in runs))
    ensure_dir(out_dir, "--out")
    curves = {}
    for run in runs:
        if run.run_dir is not None and RunDir(run.run_dir).metrics.is_file():
            curves[run.label] = read_curves(run.run_dir)
        else:
            print(f"note: no metrics.jsonl for {run.label}; its training curves are not plotted")
    figure = curves_figure(curves)
    if figure is not None:
        atomic_write(out_dir / "curves.png", figure)
    print(markdown(result, None))
    atomic_write(out_dir / "compare.md", markdown(result, "curves.png" if figure else None))
    atomic_write(
        out_dir / "compare.html", html_page("seglab compare", markdown(result, png_uri(figure) if figure else None))
    )
    atomic_write(out_dir / "compare.json", json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_dir / 'compare.md'}, {out_dir / 'compare.html'} and {out_dir / 'compare.json'}")
    return out_dir
