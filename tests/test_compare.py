"""`seglab compare`: image-set checks, per-class deltas, curves and the paired bootstrap figure."""

from __future__ import annotations

import json

import pytest
from eval_fixtures import OracleModel, random_case

from seglab import metrics
from seglab.cli import main
from seglab.compare import load_evaluation, read_curves
from seglab.engine import evaluate as ev
from seglab.errors import PathError
from seglab.runs import RunDir


def _evaluated_run(tmp_path, name, error_rate, n=12, limit=None, curve=None):
    data = random_case(7, n=n, error_rates=(error_rate,))
    result = ev.evaluate(OracleModel(3), data, gallery=0, limit=limit)
    run = tmp_path / name
    run.mkdir()
    (run / "runargs.yaml").write_text("basenet: oracle\ndecoder: none\n")
    RunDir(run).eval_dir("val").write(ev.summarize(result, bootstrap=50), result.arrays())
    if curve is not None:
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in curve) + "\n")
    return run, result


def test_compare_reports_the_paired_difference(tmp_path, capsys):
    curve = [{"step": 10, "loss": 1.0, "lr": 0.1}, {"step": 20, "loss": 0.5, "val_miou": 0.4}]
    good, res_good = _evaluated_run(tmp_path, "good", 0.02, curve=curve)
    bad, res_bad = _evaluated_run(tmp_path, "bad", 0.3, curve=curve)
    out = tmp_path / "cmp"
    assert main(["compare", str(good), str(bad), "--out", str(out), "--bootstrap", "200"]) == 0
    result = json.loads((out / "compare.json").read_text())
    test = result["paired_bootstrap"][0]
    expected = float(metrics.pooled_miou(res_bad.per_image) - metrics.pooled_miou(res_good.per_image))
    assert test["diff"] == pytest.approx(expected)
    assert test["diff"] < 0 and test["ci"][1] < 0 and test["p_value"] == pytest.approx(1 / 200)
    names = ["bg", "a", "b"]
    good_iou = metrics.segmentation_metrics(res_good.cm, names)["per_class_iou"]
    bad_iou = metrics.segmentation_metrics(res_bad.cm, names)["per_class_iou"]
    for name in names:
        assert result["per_class_iou_delta"][name] == [pytest.approx(bad_iou[name] - good_iou[name])]
    printed = capsys.readouterr().out
    assert "| bad - good |" in printed and "< 0.005" in printed and "| yes (at 5%) |" in printed
    assert (out / "curves.png").stat().st_size > 0
    assert "data:image/png;base64," in (out / "compare.html").read_text()


def test_compare_refuses_different_image_sets(tmp_path, capsys):
    full, _ = _evaluated_run(tmp_path, "full", 0.1)
    part, _ = _evaluated_run(tmp_path, "part", 0.1, limit=9)
    assert main(["compare", str(full), str(part), "--out", str(tmp_path / "x")]) == 1
    assert (
        "different image sets: 3 images only in the first (e.g. ['img009', 'img010', 'img011']), 0 only in the second"
    ) in capsys.readouterr().err


def test_compare_accepts_eval_folders_and_names_missing_ones(tmp_path):
    run, _ = _evaluated_run(tmp_path, "r", 0.1)
    loaded = load_evaluation(run / "eval" / "val", "ignored")
    assert loaded.label == "r:val" and loaded.run_dir == run
    with pytest.raises(PathError, match=r"eval/flip/metrics.json is missing: run `seglab test"):
        load_evaluation(run, "flip")


def test_read_curves_names_bad_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": \n')
    with pytest.raises(PathError, match=r"metrics.jsonl:2: not a JSON record"):
        read_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "note": "x"}\n{"step": 3, "val_miou": 0.5}\n')
    assert read_curves(tmp_path) == {"loss": [(1, 2.0)], "val_miou": [(3, 0.5)]}
