"""The study's outputs: results per run and per cell (mean, std and 95% CI over seeds), the variance
decomposition, robustness, predictor correlations, their plots, and report.md / a self-contained report.html.

Numbers in these tables are mIoU points (percent); a cell's CI is Student's t interval of the mean over its
seeds, clipped to 0-100 (none with one seed: see the runs' bootstrap CIs over images instead).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.stats import t as student_t

from seglab import tables
from seglab.bench import write_csv
from seglab.report import html_page, png, png_uri
from seglab.runs import atomic_write, ensure_dir
from seglab.study.plan import Cell
from seglab.study.predictors import PREDICTORS, answer, rho_text


@dataclass
class RunRecord:
    """One finished run of the study: its cell, seed, results row and evaluation summary (metrics.json)."""

    cell: Cell
    seed: int
    row: dict
    summary: dict


def num(value: float | None, digits: int = 1) -> str:
    """Return a number with `digits` decimals ("–" for None or NaN)."""
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def interval(ci: list | None, digits: int = 1) -> str:
    """Return [low, high] as "low–high" ("–" when unknown)."""
    return "–" if not ci or ci[0] is None else f"{num(ci[0], digits)}–{num(ci[1], digits)}"


def mean_std_ci(values: list[float]) -> tuple[float, float | None, list[float] | None]:
    """Return the mean, the standard deviation (ddof 1) and Student's t 95% CI of the mean of mIoU points
    `values` (clipped to 0-100, where mIoU lives)."""
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None, None
    std = float(np.std(values, ddof=1))
    half = float(student_t.ppf(0.975, len(values) - 1) * std / np.sqrt(len(values)))
    return mean, std, [max(0.0, mean - half), min(100.0, mean + half)]


def _mean_known(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def cell_rows(cells: list[Cell], records: list[RunRecord]) -> list[dict]:
    """Return one row per cell with at least one finished run: mIoU mean, std, CI over seeds and the rest."""
    rows = []
    for cell in cells:
        mine = [r for r in records if r.cell == cell]
        if not mine:
            continue
        mean, std, ci = mean_std_ci([r.row["miou"] for r in mine])
        first = mine[0].row
        rows.append(
            {
                "cell": cell.name,
                "basenet": cell.basenet,
                "decoder": cell.decoder,
                "grid": cell.grid_text,
                "seeds": len(mine),
                "miou_mean": mean,
                "miou_std": std,
                "miou_ci_low": None if ci is None else ci[0],
                "miou_ci_high": None if ci is None else ci[1],
                "corrupted_miou": _mean_known([r.row["corrupted_miou"] for r in mine]),
                "relative_robustness": _mean_known([r.row["relative_robustness"] for r in mine]),
                "params": first["params"],
                "gflops": first["gflops"],
                "imagenet_top1": first["imagenet_top1"],
                "probe_miou": first.get("probe_miou"),
            }
        )
    return rows


def cells_table(rows: list[dict]) -> str:
    """Return the results-by-cell Markdown table."""
    robust = any(r["corrupted_miou"] is not None for r in rows)
    header = ["cell", "seeds", "mIoU mean ± std", "95% CI (t, seeds)", "params (M)", "GFLOPs", "ImageNet top-1"]
    header += ["probe mIoU", *(["mIoU under corruption", "relative robustness"] if robust else [])]
    body = []
    for r in rows:
        cells = [
            r["cell"],
            str(r["seeds"]),
            f"{num(r['miou_mean'], 2)} ± {num(r['miou_std'], 2)}",
            interval([r["miou_ci_low"], r["miou_ci_high"]], 2),
            f"{r['params'] / 1e6:.2f}",
            f"{r['gflops']:.3g}",
            num(r["imagenet_top1"]),
            num(r["probe_miou"]),
        ]
        if robust:
            cells += [num(r["corrupted_miou"], 2), num(r["relative_robustness"], 3)]
        body.append(cells)
    return tables.markdown(header, body)


def runs_table(rows: list[dict]) -> str:
    """Return the per-run Markdown table (mIoU with its bootstrap CI over images, latency per backend)."""
    backends = [k.removeprefix("latency_ms_") for k in rows[0] if k.startswith("latency_ms_")]
    header = ["cell", "seed", "mIoU % (95% CI, images)", "checkpoint std", *[f"{b} ms" for b in backends], "eval"]
    body = [
        [
            r["cell"],
            str(r["seed"]),
            f"{num(r['miou'])} ({num(r['miou_ci_low'])}-{num(r['miou_ci_high'])})",
            num(r["checkpoint_std"], 2),
            *[num(r[f"latency_ms_{b}"]) for b in backends],
            r["eval"],
        ]
        for r in rows
    ]
    return tables.markdown(header, body, left=2)


def variance_table(variance: dict) -> str:
    """Return the variance-decomposition Markdown table: each component's sd (points), its CI and share."""
    header = ["cell", "runs x checkpoints", "reported mIoU", "seed sd (95% CI)", "checkpoint sd (95% CI)"]
    header += ["test-images sd", "total sd", "shares seed / checkpoint / test"]
    body = []
    for name, cell in variance["cells"].items():
        parts = cell["components"]

        def sd(part: dict) -> str:
            if part["std"] is None:
                return "–"
            ci = part.get("ci")
            return f"{part['std']:.2f}" + ("" if not ci else f" ({np.sqrt(ci[0]):.2f}–{np.sqrt(ci[1]):.2f})")

        shares = " / ".join("–" if p["share"] is None else f"{100 * p['share']:.0f}%" for p in parts.values())
        body.append(
            [
                name,
                f"{cell['runs']} x {cell['checkpoints_per_run']}",
                num(cell["reported_miou"], 2),
                sd(parts["seed"]),
                sd(parts["checkpoint"]),
                sd(parts["test_sampling"]),
                num(cell["total_std"], 2),
                shares,
            ]
        )
    return tables.markdown(header, body)


def pairs_table(variance: dict) -> str:
    """Return the detectable-difference Markdown table, one row per pair of cells."""
    body = [
        [
            f"{p['a']} - {p['b']}",
            f"{p['difference']:+.2f}",
            num(p["sd"], 2),
            num(p["threshold"], 2),
            num(p["detectable"], 2) if p["detectable"] is not None else f"– ({p['why']})",
        ]
        for p in variance["pairs"]
    ]
    header = ["pair", "ΔmIoU (points)", "sd of Δ", "significant above (95%)", "detectable (95%, 80% power)"]
    return tables.markdown(header, body)


def detectable_sentence(variance: dict, seeds: int) -> str:
    """Return the study's detectable difference as a sentence."""
    d = variance["detectable_difference"]
    if d["median"] is None:
        reasons = {p["why"] for p in variance["pairs"] if p["why"]}
        why = "; ".join(sorted(reasons)) or "the study has a single cell"
        return f"The smallest detectable mIoU difference between two cells cannot be computed: {why}."
    spread = "" if d["min"] == d["max"] else f" (from {d['min']:.2f} to {d['max']:.2f} over {d['pairs']} pairs)"
    return (
        f"With {seeds} seed(s) per cell, this study tells two cells apart (paired over the same test images, 95% "
        f"two-sided, 80% power) when their mIoU differs by at least {d['median']:.2f} points{spread}; smaller "
        "differences in its tables may be noise."
    )


def robustness_rows(cells: list[Cell], records: list[RunRecord]) -> list[dict]:
    """Return, per cell evaluated under corruptions, clean and corrupted mIoU and mean mIoU per severity."""
    rows = []
    for cell in cells:
        mine = [r.summary["corruptions"] for r in records if r.cell == cell and r.summary.get("corruptions")]
        if not mine:
            continue
        severities = mine[0]["severities"]
        rows.append(
            {
                "cell": cell.name,
                "clean": 100 * float(np.mean([c["clean_miou"] for c in mine])),
                "corrupted": 100 * float(np.mean([c["mean_miou"] for c in mine])),
                "relative": float(np.mean([c["relative_robustness"] for c in mine])),
                "severities": severities,
                "by_severity": [
                    100 * float(np.mean([c["per_severity"][i]["mean_miou"] for c in mine]))
                    for i in range(len(severities))
                ],
                "corruptions": [e["corruption"] for e in mine[0]["per_corruption"]],
            }
        )
    return rows


def robustness_table(rows: list[dict]) -> str:
    """Return the robustness Markdown table: clean, per-severity and mean corrupted mIoU, relative robustness."""
    severities = rows[0]["severities"]
    header = ["cell", "clean mIoU", *(f"severity {s}" for s in severities), "mean under corruption", "relative"]
    body = [
        [
            r["cell"],
            num(r["clean"], 2),
            *(num(v) for v in r["by_severity"]),
            num(r["corrupted"], 2),
            num(r["relative"], 3),
        ]
        for r in rows
    ]
    return tables.markdown(header, body)


def predictor_table(records: list[RunRecord]) -> str:
    """Return the per-basenet predictors Markdown table."""
    seen: dict[tuple, dict] = {}
    for r in records:
        seen.setdefault((r.row["basenet"], r.row["pretrained"]), r.row)
    body = [
        [
            basenet,
            str(pretrained),
            num(row["imagenet_top1"]),
            num(None if row["basenet_params"] is None else row["basenet_params"] / 1e6, 2),
            num(row["basenet_gflops"], 3),
            num(row.get("probe_miou")),
        ]
        for (basenet, pretrained), row in seen.items()
    ]
    header = ["basenet", "weights", "ImageNet top-1 %", "params (M)", "GFLOPs", "linear probe mIoU %"]
    return tables.markdown(header, body, left=2)


def correlation_table(correlations: dict) -> str:
    """Return the Spearman-correlation Markdown table: group, predictor, rho with its bootstrap CI."""
    body = [
        [group, PREDICTORS[key], rho_text(c), "–" if c["p"] is None else f"{c['p']:.2g}"]
        for group, by_key in correlations.items()
        for key, c in by_key.items()
    ]
    return tables.markdown(["runs", "predictor", "Spearman rho with fine-tuned mIoU", "p"], body, left=2)


def cells_figure(cell_table: list[dict], records: list[RunRecord]) -> bytes:
    """Return a PNG of each cell's mean mIoU with its CI over seeds and every seed's run as a dot."""
    fig = Figure(figsize=(max(5.0, 0.9 * len(cell_table) + 2), 4))
    ax = fig.add_subplot()
    for i, row in enumerate(cell_table):
        seeds = [r.row["miou"] for r in records if r.cell.name == row["cell"]]
        ax.scatter([i] * len(seeds), seeds, color="tab:gray", s=12, zorder=3)
        low = row["miou_ci_low"] if row["miou_ci_low"] is not None else row["miou_mean"]
        high = row["miou_ci_high"] if row["miou_ci_high"] is not None else row["miou_mean"]
        ax.errorbar(i, row["miou_mean"], yerr=[[row["miou_mean"] - low], [high - row["miou_mean"]]], fmt="o", capsize=4)
    ax.set_xticks(range(len(cell_table)), [r["cell"] for r in cell_table], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mIoU % (mean, 95% CI over seeds; dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def variance_figure(variance: dict) -> bytes:
    """Return a PNG of each cell's component standard deviations (points) with their 95% intervals."""
    names = list(variance["cells"])
    keys = [("seed", "seed"), ("checkpoint", "checkpoint"), ("test_sampling", "test images")]
    fig = Figure(figsize=(max(5.0, 1.2 * len(names) + 2), 4))
    ax = fig.add_subplot()
    x = np.arange(len(names))
    for j, (key, label) in enumerate(keys):
        parts = [variance["cells"][n]["components"][key] for n in names]
        sds = np.array([np.nan if p["std"] is None else p["std"] for p in parts])
        err = np.array(
            [
                [0.0, 0.0]
                if not p.get("ci") or p["std"] is None
                else [p["std"] - np.sqrt(p["ci"][0]), np.sqrt(p["ci"][1]) - p["std"]]
                for p in parts
            ]
        ).T
        ax.bar(x + (j - 1) * 0.27, np.nan_to_num(sds), 0.27, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("standard deviation (mIoU points)")
    ax.set_title("where the mIoU spread comes from (95% CI)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def robustness_figure(rows: list[dict]) -> bytes:
    """Return a PNG of each cell's mean mIoU under corruption against severity, clean mIoU dashed."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    for i, row in enumerate(rows):
        colour = f"C{i % 10}"
        ax.plot(row["severities"], row["by_severity"], marker="o", color=colour, label=row["cell"])
        ax.axhline(row["clean"], color=colour, linestyle="--", linewidth=1)
    ax.set_xticks(rows[0]["severities"])
    ax.set_xlabel("severity")
    ax.set_ylabel("mean mIoU % under corruption (dashed: clean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png(fig)


def predictors_figure(rows: list[dict]) -> bytes:
    """Return a PNG with one panel per predictor: each run's mIoU against it, one colour per group."""
    fig = Figure(figsize=(4 * len(PREDICTORS), 3.6))
    groups = list(dict.fromkeys(r["decoder"] + (f", {r['grid']}" if r.get("grid") else "") for r in rows))
    for i, (key, label) in enumerate(PREDICTORS.items()):
        ax = fig.add_subplot(1, len(PREDICTORS), i + 1)
        for g, group in enumerate(groups):
            pts = [
                r
                for r in rows
                if r.get(key) is not None and r["decoder"] + (f", {r['grid']}" if r.get("grid") else "") == group
            ]
            ax.scatter([r[key] for r in pts], [r["miou"] for r in pts], color=f"C{g % 10}", s=14, label=group)
            for r in pts:
                ax.annotate(r["basenet"], (r[key], r["miou"]), textcoords="offset points", xytext=(3, 3), fontsize=6)
        if not any(r.get(key) is not None for r in rows):
            ax.text(0.5, 0.5, "no run has this value", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(label)
        ax.set_ylabel("fine-tuned mIoU %")
        ax.grid(alpha=0.3)
    if groups:
        fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def report_markdown(context: dict, figures: dict[str, str]) -> str:
    """Return the study report as Markdown; `figures` maps a figure key to its file name or data URI."""
    c = context
    study = c["study"]
    points = len(c["cells"]) // (len(study.basenets) * len(study.decoders))
    grid = f" x {points} grid points" if study.grid else ""
    lines = [
        f"# seglab study: {c['name']}",
        "",
        f"{len(c['cells'])} cells ({len(study.basenets)} basenets x {len(study.decoders)} decoders{grid}), each "
        f"trained with seeds {', '.join(map(str, study.seeds))}: {len(c['records'])} runs, evaluated on {c['eval']} "
        f"at their {study.last_k} newest checkpoint(s).",
        "",
    ]
    if c["failed"]:
        failed = ", ".join(c["failed"])
        lines += [f"**{len(c['failed'])} job(s) failed** and are left out: {failed} (see state.json).", ""]
    lines += ["## Results by cell", "", cells_table(c["cell_rows"]), "", f"![mIoU by cell]({figures['cells']})", ""]
    lines += [
        "mIoU in points; mean ± standard deviation over seeds and Student's t 95% CI of the mean (with one seed: "
        "none; see the runs' bootstrap CIs over images below).",
        "",
        "## Variance decomposition",
        "",
        detectable_sentence(c["variance"], len(c["study"].seeds)),
        "",
        variance_table(c["variance"]),
        "",
        f"![variance components]({figures['variance']})",
        "",
        pairs_table(c["variance"]) if c["variance"]["pairs"] else "One cell: no pair to compare.",
        "",
        f"Method: {c['variance']['method']} See `seglab/study/variance.py` for the estimator and its references.",
        "",
        "## Robustness under corruptions",
        "",
    ]
    if c["robustness"]:
        rows = c["robustness"]
        lines += [
            f"Corruptions: {', '.join(rows[0]['corruptions'])}; relative robustness = mean mIoU under corruption / "
            "clean mIoU (Kamann & Rother, CVPR 2020).",
            "",
            robustness_table(rows),
            "",
            f"![robustness by severity]({figures['robustness']})",
            "",
        ]
    else:
        lines += ["Not evaluated: add `corruptions: [all]` (and `severities`) to the study's `test` section.", ""]
    lines += ["## What predicts a good basenet", ""]
    lines += [f"- {answer(group, corr)}" for group, corr in c["correlations"].items()]
    lines += [
        "",
        predictor_table(c["records"]),
        "",
        correlation_table(c["correlations"]),
        "",
        f"![predictors]({figures['predictors']})",
        "",
        "Spearman's rho over runs (every seed of every basenet), 95% percentile bootstrap interval over runs; "
        "ImageNet top-1 only for runs that started from the ImageNet weights seglab has a figure for; params and "
        "GFLOPs of the basenet alone at the bench size; linear probe: a 1x1 classifier on one tap of the frozen "
        "basenet (`seglab/study/probe.py`).",
        "",
        "## Runs",
        "",
        runs_table(c["rows"]),
        "",
    ]
    return "\n".join(lines)


def write_outputs(context: dict, out: Path) -> dict[str, Path]:
    """Write results.csv, cells.csv, results.md, variance.json, predictors.json, the plots and the report."""
    ensure_dir(out, "--out")
    write_csv(context["rows"], out / "results.csv")
    write_csv(context["cell_rows"], out / "cells.csv")
    atomic_write(out / "variance.json", json.dumps(context["variance"], indent=2) + "\n")
    atomic_write(out / "predictors.json", json.dumps(context["correlations"], indent=2) + "\n")
    pngs = {
        "cells": cells_figure(context["cell_rows"], context["records"]),
        "variance": variance_figure(context["variance"]),
        "predictors": predictors_figure(context["rows"]),
    }
    if context["robustness"]:
        pngs["robustness"] = robustness_figure(context["robustness"])
    files = {key: f"{key}.png" for key in pngs}
    for key, data in pngs.items():
        atomic_write(out / files[key], data)
    results_md = "\n\n".join([cells_table(context["cell_rows"]), runs_table(context["rows"])])
    results_md += "\n\n" + "\n".join(f"- {answer(g, c)}" for g, c in context["correlations"].items()) + "\n"
    atomic_write(out / "results.md", results_md)
    atomic_write(out / "report.md", report_markdown(context, files))
    uris = {key: png_uri(data) for key, data in pngs.items()}
    atomic_write(out / "report.html", html_page("seglab study", report_markdown(context, uris)))
    return {"report": out / "report.html", "markdown": out / "report.md", "csv": out / "results.csv"}
