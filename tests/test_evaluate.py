"""The evaluate loop on planted predictions, checkpoint selection and the `seglab test` command."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import torch
from eval_fixtures import OracleModel, random_case

from seglab import metrics, runs
from seglab.config import TrainConfig
from seglab.engine import evaluate as ev
from seglab.engine.checkpoint import LoadedRun
from seglab.errors import ConfigError, PathError
from seglab.runs import EvalDir, Target


def test_evaluate_keeps_exact_per_image_matrices_objects_and_worst_images():
    data = random_case(0)
    model = OracleModel(3, output_stride=16)
    result = ev.evaluate(model, data, gallery=2)
    assert model.shapes == [(48, 64)] * 4  # 40x56 padded to the stride
    assert result.image_ids == ["img000", "img001", "img002", "img003"]
    for i in range(4):
        expected = metrics.confusion_matrix(data.predictions[i][None], data.labels[i][None], 3, 255)
        assert torch.equal(result.per_image[i], metrics.class_counts(expected))
    expected = metrics.confusion_matrix(torch.stack(data.predictions), torch.stack(data.labels), 3, 255)
    assert torch.equal(result.cm, expected)
    # objects: every instance with its class, area and correctly predicted pixels
    rows = []
    for i in range(4):
        rec = metrics.instance_records(data.instances[i], data.labels[i], data.predictions[i], 3, 255)
        rows += [[i, *r] for r in rec.tolist()]
    assert result.objects.tolist() == rows
    # the two worst images by per-image mIoU, worst first, with their predictions
    per_image = metrics.nanmean(metrics.counts_iou(result.per_image))
    order = per_image.argsort().tolist()
    assert [i for _, i, _ in result.worst] == order[:2]
    assert torch.equal(result.worst[0][2], data.predictions[order[0]].to(torch.uint8))
    boundary = metrics.boundary_stats(torch.stack(data.predictions), torch.stack(data.labels), 3, 255)
    assert torch.equal(result.boundary, boundary)


def test_summarize_reports_point_estimate_ci_sizes_and_confusions():
    data = random_case(1)
    result = ev.evaluate(OracleModel(3), data, gallery=3)
    summary = ev.summarize(result, bootstrap=200, size_bins=(50, 100))
    reference = metrics.segmentation_metrics(result.cm, data.classes)
    assert summary["miou"] == reference["miou"]
    assert summary["per_class_iou"] == reference["per_class_iou"]
    low, high = summary["miou_ci"]
    assert low < summary["miou"] < high
    assert summary["num_images"] == 4 and len(summary["worst_images"]) == 3
    assert summary["sizes"]["objects"] == result.objects.shape[0]
    assert [b["range"] for b in summary["sizes"]["bins"]] == ["area < 50", "50 <= area < 100", "area >= 100"]
    top = summary["top_confusions"][0]
    cm = result.cm.clone().fill_diagonal_(0)
    r, c = divmod(int(cm.argmax()), 3)
    assert (top["label"], top["predicted"], top["pixels"]) == (data.classes[r], data.classes[c], int(cm.max()))
    json.dumps(summary)  # JSON-ready: None, not NaN


def test_limit_and_no_instances():
    data = random_case(2)
    data.instances, data.has_instances = None, False
    result = ev.evaluate(OracleModel(3), data, limit=2, gallery=0)
    assert result.per_image.shape == (2, 3, 3) and result.objects is None and result.worst == []
    assert ev.summarize(result, bootstrap=50)["sizes"] is None


def test_out_of_range_label_names_the_sample():
    data = random_case(3)
    data.labels[2][5, 5] = 9
    with pytest.raises(metrics.OutOfRangeError, match=r"img002: label values outside 0..2 and ignore 255: 9"):
        ev.evaluate(OracleModel(3), data)


def test_model_and_dataset_class_counts_must_agree():
    with pytest.raises(ConfigError, match="predicts 4 classes but the dataset has 3"):
        ev.evaluate(OracleModel(4), random_case(0))


def _fake_run(tmp_path, steps):
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    (tmp_path / "run" / "runargs.yaml").write_text("basenet: oracle\n")
    for s in steps:
        (ckpt / f"step_{s:07d}.pt").write_bytes(b"")
    (ckpt / "last.pt").write_bytes(b"")
    return tmp_path / "run"


def test_choose_checkpoints(tmp_path):
    run = _fake_run(tmp_path, [100, 200, 300])
    rd = runs.RunDir(run)
    assert runs.choose_checkpoints(run) == [Target(rd.last, rd, "last")]
    assert [t.name for t in runs.choose_checkpoints(run, last_k=2)] == ["step_300", "step_200"]
    chosen = runs.choose_checkpoints(run, ["last", "step_100", "200"])
    assert [(t.name, t.checkpoint) for t in chosen] == [
        ("last", rd.last),
        ("step_100", run / "checkpoints" / "step_0000100.pt"),
        ("step_200", run / "checkpoints" / "step_0000200.pt"),
    ]
    with pytest.raises(ConfigError, match=r"no checkpoint 'step_150'.*it has last and step_100, step_200, step_300"):
        runs.choose_checkpoints(run, ["step_150"])
    with pytest.raises(ConfigError, match=r"--last-k 4: .* holds 3 step checkpoints"):
        runs.choose_checkpoints(run, last_k=4)
    with pytest.raises(PathError, match="last.pt is not a run folder"):
        runs.choose_checkpoints(run / "checkpoints" / "last.pt", ["last"])
    target = runs.resolve_target(run / "checkpoints" / "step_0000200.pt")
    assert (target.run, target.name) == (rd, "step_0000200")
    (tmp_path / "loose.pt").write_bytes(b"")
    assert runs.resolve_target(tmp_path / "loose.pt").run is None


def test_saved_per_image_matrices_round_trip(tmp_path):
    result = ev.evaluate(OracleModel(3), random_case(4), gallery=0)
    EvalDir(tmp_path).write(ev.summarize(result, bootstrap=20), result.arrays())
    arrays = EvalDir(tmp_path).read_per_image()
    assert torch.equal(torch.from_numpy(arrays["per_image_counts"]), result.per_image)
    assert list(arrays["image_ids"]) == result.image_ids and list(arrays["class_names"]) == ["bg", "a", "b"]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert np.array(saved["confusion_matrix"]).sum() == int(result.cm.sum())
    with pytest.raises(PathError, match="run `seglab test` first"):
        EvalDir(tmp_path / "nowhere").read_arrays()
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(PathError, match=r"metrics.json cannot be read \(Expecting property name"):
        EvalDir(tmp_path).read_summary()


def test_seglab_test_command_writes_metrics_report_and_spread(tmp_path, monkeypatch, capsys):
    """`seglab test` wiring, with checkpoint loading and the dataset replaced by the stand-ins."""
    import seglab.evaluation
    from seglab.cli import main

    run = _fake_run(tmp_path, [100, 200])
    data = random_case(6)
    loaded = []

    def load_run(target, device="cpu", ema=False):
        path = target.checkpoint
        loaded.append(path.name)
        model = OracleModel(3)
        model.scale.data.fill_(1.0 if path.name != "step_0000100.pt" else -1.0)  # step 100 predicts badly
        step = int(path.stem.split("_")[-1]) if "step" in path.name else 300
        config = TrainConfig(basenet="oracle", decoder="none", dataset="fake", crop=[64, 64])
        return LoadedRun(model, config, step, list(data.classes), 255, target)

    monkeypatch.setattr(seglab.evaluation, "load_run", load_run)
    monkeypatch.setattr(seglab.evaluation, "build_dataset", lambda name, root, split, **options: data)
    code = main(
        [
            *["test"],
            str(run),
            *shlex.split("--checkpoints last,step_100 --bootstrap 50 --gallery 2 --flip --workers 0 --device cpu"),
        ]
    )
    assert code == 0
    out_dir = run / "eval" / "val-flip"
    summary = json.loads((out_dir / "metrics.json").read_text())
    assert {"miou", "miou_ci", "per_class_iou", "pixel_acc"} <= set(summary)
    assert loaded == ["last.pt", "step_0000100.pt"]
    spread = summary["checkpoint_spread"]
    assert [e["checkpoint"] for e in spread["checkpoints"]] == ["last", "step_100"]
    assert [e["step"] for e in spread["checkpoints"]] == [300, 100]
    assert spread["checkpoints"][0]["miou"] == summary["miou"] > spread["checkpoints"][1]["miou"]
    assert summary["model"]["basenet"] == "oracle" and summary["test_options"]["flip"] is True
    for name in ("report.html", "report.md", "per_image_cm.npz", "confusion.png", "gallery.png"):
        assert (out_dir / name).is_file(), name
    assert f"last: mIoU {100 * summary['miou']:.2f}" in capsys.readouterr().out
    # a single step checkpoint file gets its own evaluation folder name
    assert main(["test", str(run / "checkpoints" / "step_0000200.pt"), "--bootstrap", "20", "--workers", "0"]) == 0
    assert (run / "eval" / "val-step_0000200" / "metrics.json").is_file()


@pytest.mark.slow
def test_seglab_test_on_a_trained_synthetic_run(tmp_path):
    """End to end: a 2-step run on the embedded dataset, then `seglab test` on two of its checkpoints."""
    from seglab.cli import main

    assert (
        main(
            [
                *shlex.split(
                    "train --basenet resnet18 --decoder fcn8s --pretrained none --dataset-options length=4 "
                    "size=32 --crop 32 --iters 2 --batch-size 2 --workers 0 --ckpt-every 1 --keep 1 "
                    "--eval-every 2 --device cpu --runs-root"
                ),
                str(tmp_path),
                *["--run-name", "tiny"],
            ]
        )
        == 0
    )
    run = tmp_path / "tiny"
    assert (
        main(
            [
                *["test"],
                str(run),
                *["--last-k", "2", "--bootstrap", "50", "--gallery", "2", "--workers", "0", "--device", "cpu"],
            ]
        )
        == 0
    )
    summary = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    arrays = EvalDir(run / "eval" / "val").read_per_image()
    counts, ids = torch.from_numpy(arrays["per_image_counts"]), list(arrays["image_ids"])
    names = list(arrays["class_names"])
    assert len(ids) == 4 and names == ["background", "disk", "square", "triangle", "ring", "cross"]
    assert summary["miou"] == metrics.segmentation_metrics(torch.tensor(summary["confusion_matrix"]), names)["miou"]
    assert summary["miou"] == float(metrics.pooled_miou(counts))
    assert [e["step"] for e in summary["checkpoint_spread"]["checkpoints"]] == [2, 1]
    assert summary["model"]["basenet"] == "resnet18" and summary["model"]["gflops_size"] == [32, 32]
    assert summary["sizes"]["objects"] > 0
    assert "<h2>Per object size</h2>" in (run / "eval" / "val" / "report.html").read_text()
