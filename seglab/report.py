"""Evaluation reports: report.md and a self-contained report.html (plots embedded as base64 PNG).

Both hold the point estimates with their bootstrap CI, the checkpoint spread, per-class and per-size
tables, Boundary IoU, robustness under corruptions (with `--corruptions`), the row-normalized confusion
matrix, the most confused class pairs, a gallery of the worst images (image / label / prediction) and a
results-table row ready to paste.
Figures are drawn with matplotlib's object API (no pyplot global state); the HTML is report.md
rendered by Python-Markdown with the images inlined as data URIs.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import markdown as markdown_lib
import numpy as np
from matplotlib.figure import Figure

from seglab import tables
from seglab.runs import atomic_write, ensure_dir
from seglab.tables import percent as pct
from seglab.visual import overlay


def ci_text(interval: Sequence[float | None] | None) -> str:
    """Return an interval [low, high] of shares as "low–high" in percent."""
    if not interval or interval[0] is None:
        return "–"
    return f"{pct(interval[0])}–{pct(interval[1])}"


def gallery_items(dataset, result) -> list[dict]:
    """Return the worst images of an EvalResult as dicts: id, miou, image, label, prediction (numpy)."""
    items = []
    for miou, index, pred in result.worst:
        image, label = dataset.load(index)
        items.append(
            {
                "id": dataset.sample_id(index),
                "miou": miou,
                "image": image.permute(1, 2, 0).numpy(),
                "label": label.numpy(),
                "prediction": pred.numpy(),
            }
        )
    return items


def confusion_figure(cm: np.ndarray, names: Sequence[str]) -> bytes:
    """Return a PNG heatmap of the confusion matrix normalized by row (share of each label's pixels)."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(names)
    side = min(14.0, 2.5 + 0.45 * n)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title("confusion matrix (each row sums to 1)")
    if n <= 25:
        for r in range(n):
            for c in range(n):
                if norm[r, c] >= 0.005:
                    ax.text(
                        c,
                        r,
                        f"{norm[r, c]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[r, c] > 0.5 else "black",
                    )
    fig.colorbar(im, ax=ax, fraction=0.046)
    return png(fig)


def per_class_figure(summary: dict) -> bytes:
    """Return a PNG bar chart of per-class IoU with bootstrap CI error bars and Boundary IoU."""
    names = list(summary["per_class_iou"])
    iou = np.array([np.nan if v is None else v for v in summary["per_class_iou"].values()])
    cis = [summary["per_class_iou_ci"][n] for n in names]
    low = np.array([np.nan if c[0] is None else c[0] for c in cis])
    high = np.array([np.nan if c[1] is None else c[1] for c in cis])
    band = np.array([np.nan if v is None else v for v in summary["boundary"]["per_class_iou"].values()])
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6.0, 0.5 * len(names) + 2), 4))
    ax = fig.add_subplot()
    err = np.nan_to_num(np.stack([iou - low, high - iou]).clip(min=0))
    ax.bar(x - 0.2, np.nan_to_num(iou), 0.4, yerr=err, capsize=2, label="IoU (95% CI)")
    ax.bar(x + 0.2, np.nan_to_num(band), 0.4, label="Boundary IoU")
    ax.set_xticks(x, names, rotation=60, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def size_figure(sizes: dict) -> bytes:
    """Return a PNG bar chart of mean object recall per size bin, with object counts."""
    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    labels = [f"{b['name']}\n{b['range']}\n{b['objects']} objects" for b in sizes["bins"]]
    ax.bar(range(len(labels)), [b["mean_recall"] or 0.0 for b in sizes["bins"]], color="tab:green")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean object recall")
    return png(fig)


def gallery_figure(items: Sequence[dict], palette: np.ndarray, ignore_index: int) -> bytes:
    """Return a PNG grid: one row per image with the image, the label and the prediction overlays."""
    fig = Figure(figsize=(9, 3 * len(items)))
    for row, item in enumerate(items):
        panels = [
            ("image", item["image"]),
            ("label", overlay(item["image"], item["label"], palette, ignore_index)),
            ("prediction", overlay(item["image"], item["prediction"], palette, ignore_index)),
        ]
        for col, (title, picture) in enumerate(panels):
            ax = fig.add_subplot(len(items), 3, 3 * row + col + 1)
            ax.imshow(picture)
            ax.set_axis_off()
            ax.set_title(f"{item['id']} (mIoU {100 * item['miou']:.1f})" if col == 0 else title, fontsize=9)
    fig.tight_layout()
    return png(fig)


def severity_figure(corruptions: dict) -> bytes:
    """Return a PNG of mIoU against corruption severity: one line per corruption, their mean, and clean mIoU."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    severities = corruptions["severities"]
    for entry in corruptions["per_corruption"]:
        name = entry["corruption"]
        by_severity = {r["severity"]: r["miou"] for r in corruptions["results"] if r["corruption"] == name}
        ys = [np.nan if by_severity.get(s) is None else 100 * by_severity[s] for s in severities]
        ax.plot(severities, ys, marker=".", linewidth=1, alpha=0.7, label=name)
    means = [np.nan if e["mean_miou"] is None else 100 * e["mean_miou"] for e in corruptions["per_severity"]]
    ax.plot(severities, means, color="black", linewidth=2.5, marker="o", label="mean")
    if corruptions["clean_miou"] is not None:
        ax.axhline(100 * corruptions["clean_miou"], color="black", linestyle="--", label="clean")
    ax.set_xticks(severities)
    ax.set_xlabel("severity")
    ax.set_ylabel("mIoU %")
    ax.set_title("mIoU under ImageNet-C corruptions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.02, 1), loc="upper left")
    return png(fig)


def robustness_lines(corruptions: dict, figure: str | None) -> list[str]:
    """Return the report section on corruptions: mean mIoU, relative robustness, per corruption and severity."""
    severities = corruptions["severities"]
    lines = [
        "## Robustness under corruptions",
        "",
        f"Mean mIoU under corruption **{pct(corruptions['mean_miou'], 2)}** over "
        f"{len(corruptions['per_corruption'])} corruptions x {len(severities)} severities; relative robustness "
        f"(corrupted / clean mIoU, Kamann & Rother 2020) **{ratio_text(corruptions['relative_robustness'])}** "
        f"(clean {pct(corruptions['clean_miou'], 2)}).",
        "",
    ]
    if figure:
        lines += [f"![mIoU by severity]({figure})", ""]
    by_key = {(r["corruption"], r["severity"]): r["miou"] for r in corruptions["results"]}
    rows = [
        [
            e["corruption"],
            *(pct(by_key.get((e["corruption"], s)), 1) for s in severities),
            pct(e["mean_miou"], 2),
            ratio_text(e["relative"]),
        ]
        for e in corruptions["per_corruption"]
    ]
    rows.append(
        [
            "mean",
            *(pct(e["mean_miou"], 1) for e in corruptions["per_severity"]),
            pct(corruptions["mean_miou"], 2),
            ratio_text(corruptions["relative_robustness"]),
        ]
    )
    lines += md_table(["corruption", *(f"severity {s}" for s in severities), "mean mIoU", "relative"], rows)
    return [*lines, ""]


def ratio_text(value: float | None) -> str:
    """Return a ratio such as relative robustness with three decimals ("–" when undefined)."""
    return "–" if value is None else f"{value:.3f}"


def results_row(summary: dict) -> tuple[str, str]:
    """Return (header, row) of the paste-ready Markdown results table: basenet, decoder, params, GFLOPs, mIoU."""
    model = summary.get("model") or {}
    size = model.get("gflops_size") or ["?", "?"]
    header = (
        f"| basenet | decoder | params (M) | GFLOPs @ {size[0]}x{size[1]} | {summary['dataset']['name']} "
        f"{summary['dataset']['split']} mIoU (95% CI) |\n|---|---|---:|---:|---:|"
    )
    params = model.get("params")
    gflops = model.get("gflops")
    row = (
        f"| {model.get('basenet', '?')} | {model.get('decoder', '?')} | "
        f"{'?' if params is None else f'{params / 1e6:.2f}'} | {'?' if gflops is None else f'{gflops:.1f}'} | "
        f"{pct(summary['miou'])} ({ci_text(summary['miou_ci'])}) |"
    )
    return header, row


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Return the lines of a Markdown table, first column left-aligned, the others right-aligned."""
    return tables.markdown(header, rows).splitlines()


def markdown(summary: dict, figures: dict[str, str]) -> str:
    """Return report.md; `figures` maps a figure key to the PNG file name (or data URI) to show."""
    boot = summary["bootstrap"]
    opts = summary.get("test_options") or {}
    dataset = summary.get("dataset") or {"name": "?", "split": "?"}
    model = summary.get("model") or {}
    lines = [
        f"# seglab evaluation: {model.get('basenet', '?')} + {model.get('decoder', '?')} on "
        f"{dataset['name']} {dataset['split']}",
        "",
    ]
    lines += [
        f"**mIoU {pct(summary['miou'], 2)}** (95% CI {ci_text(summary['miou_ci'])}; bootstrap over "
        f"{summary['num_images']} images, {boot['resamples']} resamples, seed {boot['seed']})",
        "",
    ]
    spread = summary.get("checkpoint_spread")
    if spread:
        lines += [
            f"Across {len(spread['checkpoints'])} checkpoints: mIoU {pct(spread['mean'], 2)} ± "
            f"{pct(spread['std'], 2)} (mean ± std), range {pct(spread['min'], 2)}–{pct(spread['max'], 2)}.",
            "",
        ]
    sizes = summary.get("sizes")
    headline = [
        ("pixel accuracy", pct(summary["pixel_acc"], 2)),
        ("mean class accuracy", pct(summary["mean_class_acc"], 2)),
        ("frequency-weighted IoU", pct(summary["fw_iou"], 2)),
        ("mean Dice / F1", pct(summary["dice"], 2)),
        (
            f"Boundary IoU (band {summary['boundary']['dilation_ratio']:g} x diagonal)",
            pct(summary["boundary"]["miou"], 2),
        ),
        ("instance-averaged IoU (iIoU)", "no instance masks" if sizes is None else pct(sizes["iiou"], 2)),
        (
            "test options",
            f"scales {opts.get('scales', [1.0])}, flip {opts.get('flip', False)}, "
            f"sliding window {opts.get('window') or 'off'}",
        ),
    ]
    lines += [*md_table(["metric", "value"], headline), ""]
    header, row = results_row(summary)
    lines += ["## Results-table row", "", header, row, ""]
    if spread:
        lines += ["## Checkpoint spread", ""]
        lines += md_table(
            ["checkpoint", "mIoU", "95% CI"],
            [(e["checkpoint"], pct(e["miou"], 2), ci_text(e["miou_ci"])) for e in spread["checkpoints"]],
        )
        lines += [
            "",
            f"mean {pct(spread['mean'], 2)}, std {pct(spread['std'], 2)}, range "
            f"{pct(spread['min'], 2)}–{pct(spread['max'], 2)} over {len(spread['checkpoints'])} "
            "checkpoints",
            "",
        ]
    lines += ["## Per class", "", f"![per-class IoU]({figures['per_class']})", ""]
    names = list(summary["per_class_iou"])
    rows = []
    for n in names:
        rec = sizes["per_class_recall"][n] if sizes else [None, None, None]
        rows.append(
            [
                n,
                pct(summary["per_class_iou"][n]),
                ci_text(summary["per_class_iou_ci"][n]),
                pct(summary["per_class_acc"][n]),
                pct(summary["per_class_dice"][n]),
                pct(summary["boundary"]["per_class_iou"][n]),
                pct(sizes["per_class_iiou"][n]) if sizes else "–",
                *(pct(r) for r in rec),
            ]
        )
    lines += md_table(
        ["class", "IoU", "95% CI", "acc", "Dice", "Boundary IoU", "iIoU", "recall S", "recall M", "recall L"], rows
    )
    if summary["absent_classes"]:
        lines += ["", "Absent from labels and predictions (left out of means): " + ", ".join(summary["absent_classes"])]
    lines += [""]
    if sizes:
        lines += ["## Per object size", "", f"![object recall by size]({figures['sizes']})", ""]
        lines += md_table(
            ["size", "area (px)", "objects", "mean recall", "pixel recall"],
            [
                (b["name"], b["range"], str(b["objects"]), pct(b["mean_recall"]), pct(b["pixel_recall"]))
                for b in sizes["bins"]
            ],
        )
        lines += ["", "Recall of an object: share of its pixels predicted as its class.", ""]
    if summary.get("corruptions"):
        lines += robustness_lines(summary["corruptions"], figures.get("robustness"))
    lines += ["## Failure analysis", "", f"![confusion matrix]({figures['confusion']})", ""]
    if summary["top_confusions"]:
        lines += md_table(
            ["label", "predicted as", "pixels", "share of label"],
            [
                (t["label"], t["predicted"], str(t["pixels"]), pct(t["share_of_label"]))
                for t in summary["top_confusions"]
            ],
        )
        lines += [""]
    if "gallery" in figures:
        lines += [
            f"### Worst {len(summary['worst_images'])} images by per-image mIoU",
            "",
            f"![worst images]({figures['gallery']})",
            "",
        ]
    return "\n".join(lines)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%}h1{font-size:1.5em}"""


def write_report(out_dir: Path, summary: dict, gallery: Sequence[dict], palette: np.ndarray) -> tuple[Path, Path]:
    """Write the figures, report.md and a self-contained report.html to `out_dir`; return (html, md) paths."""
    ensure_dir(out_dir, "report folder")
    names = list(summary["per_class_iou"])
    pngs = {
        "per_class": per_class_figure(summary),
        "confusion": confusion_figure(np.array(summary["confusion_matrix"]), names),
    }
    if summary.get("sizes"):
        pngs["sizes"] = size_figure(summary["sizes"])
    if summary.get("corruptions"):
        pngs["robustness"] = severity_figure(summary["corruptions"])
    if gallery:
        pngs["gallery"] = gallery_figure(gallery, palette, summary.get("ignore_index", 255))
    files = {}
    for key, data in pngs.items():
        atomic_write(out_dir / f"{key}.png", data)
        files[key] = f"{key}.png"
    md_path = atomic_write(out_dir / "report.md", markdown(summary, files))
    uris = {k: png_uri(v) for k, v in pngs.items()}
    html_path = atomic_write(out_dir / "report.html", html_page("seglab evaluation", markdown(summary, uris)))
    return html_path, md_path


def html_page(title: str, text: str) -> str:
    """Return a self-contained HTML page rendering Markdown `text` (images must be data URIs)."""
    body = markdown_lib.markdown(text, extensions=["tables"])
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def png_uri(data: bytes) -> str:
    """Return a PNG as a data URI for embedding."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def png(fig: Figure) -> bytes:
    """Return a matplotlib figure rendered as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()
