"""report.md / report.html: content, self-containment and the paste-ready results row."""

from __future__ import annotations

import io
import re

from eval_fixtures import OracleModel, random_case
from PIL import Image

from seglab import report
from seglab.engine import evaluate as ev


def test_results_row():
    summary = {
        "miou": 0.63214,
        "miou_ci": [0.6188, 0.6441],
        "dataset": {"name": "voc", "split": "val"},
        "model": {
            "basenet": "resnet18",
            "decoder": "fcn8s",
            "params": 11_700_000,
            "gflops": 21.44,
            "gflops_size": [512, 512],
        },
    }
    header, row = report.results_row(summary)
    assert header.splitlines()[0] == "| basenet | decoder | params (M) | GFLOPs @ 512x512 | voc val mIoU (95% CI) |"
    assert row == "| resnet18 | fcn8s | 11.70 | 21.4 | 63.2 (61.9–64.4) |"


def _summary_and_gallery(tmp_path):
    data = random_case(8, n=5)
    result = ev.evaluate(OracleModel(3), data, gallery=3)
    summary = ev.summarize(result, bootstrap=100, size_bins=(30, 80))
    summary["model"] = {"basenet": "oracle", "decoder": "none", "params": 1, "gflops": 0.0, "gflops_size": [64, 64]}
    summary["dataset"] = {"name": "fake", "split": "val"}
    summary["test_options"] = {"scales": [1.0], "flip": False, "window": None, "stride": None}
    summary["checkpoint_spread"] = ev.checkpoint_spread(
        [
            {"checkpoint": "last", "step": 300, "miou": 0.60, "miou_ci": [0.55, 0.65]},
            {"checkpoint": "step_200", "step": 200, "miou": 0.58, "miou_ci": [0.53, 0.63]},
        ]
    )
    return summary, report.gallery_items(data, result), data


def test_report_holds_every_section_and_is_self_contained(tmp_path):
    summary, gallery, data = _summary_and_gallery(tmp_path)
    html_path, md_path = report.write_report(tmp_path, summary, gallery, data.palette)
    md = md_path.read_text()
    low, high = summary["miou_ci"]
    assert (
        f"**mIoU {100 * summary['miou']:.2f}** (95% CI {100 * low:.1f}–{100 * high:.1f}; bootstrap over 5 "
        "images, 100 resamples, seed 0)" in md
    )
    for heading in (
        "## Results-table row",
        "## Checkpoint spread",
        "## Per class",
        "## Per object size",
        "## Failure analysis",
        "### Worst 3 images by per-image mIoU",
    ):
        assert heading in md, heading
    assert report.results_row(summary)[1] in md
    assert "mean 59.00, std 1.41, range 58.00–60.00 over 2 checkpoints" in md
    assert "Across 2 checkpoints: mIoU 59.00 ± 1.41 (mean ± std), range 58.00–60.00." in md
    assert "| small | area < 30 |" in md
    for name in data.classes:
        assert re.search(rf"^\| {name} \| ", md, re.M), name
    top = summary["top_confusions"][0]
    assert f"| {top['label']} | {top['predicted']} | {top['pixels']} |" in md
    for png in ("per_class.png", "confusion.png", "sizes.png", "gallery.png"):
        assert f"]({png})" in md
        with Image.open(tmp_path / png) as im:
            assert im.format == "PNG" and min(im.size) > 50
    page = html_path.read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<table>" in page and "<h2>Per class</h2>" in page and "href=" not in page


def test_gallery_shows_image_label_prediction_rows(tmp_path):
    summary, gallery, data = _summary_and_gallery(tmp_path)
    one = Image.open(io.BytesIO(report.gallery_figure(gallery[:1], data.palette, 255)))
    three = Image.open(io.BytesIO(report.gallery_figure(gallery, data.palette, 255)))
    assert three.size[1] > 2.5 * one.size[1]
    assert [g["id"] for g in gallery] == [w["id"] for w in summary["worst_images"]]
    assert gallery[0]["prediction"].shape == gallery[0]["label"].shape == gallery[0]["image"].shape[:2]
