"""Robustness under the ImageNet-C corruptions: the imagecorruptions definitions applied deterministically per
image and severity, noise lowering mIoU, the Kamann & Rother summary, the report and `seglab test --corruptions`."""

from __future__ import annotations

import json
import shlex

import imagecorruptions
import numpy as np
import pytest
import torch
from deploy_fixtures import photo_crops, train_tiny_run
from eval_fixtures import OracleModel, random_case

from seglab import evaluation, metrics
from seglab.cli import main as seglab
from seglab.compare import compare, load_evaluation, markdown
from seglab.config import CORRUPTIONS, TrainConfig
from seglab.corruptions import CorruptedDataset, corrupt, corruption_names, image_seed, robustness_summary
from seglab.engine import evaluate as ev
from seglab.engine.checkpoint import LoadedRun
from seglab.errors import ConfigError, DatasetError


def test_names_are_the_15_imagenet_c_corruptions_of_the_package():
    assert list(CORRUPTIONS) == imagecorruptions.get_corruption_names("common")
    assert corruption_names(["all"]) == list(CORRUPTIONS)
    assert corruption_names(["fog", "gaussian_noise"]) == ["gaussian_noise", "fog"]  # benchmark order
    with pytest.raises(ConfigError, match="unknown corruption 'rain'; choose from all, gaussian_noise"):
        corruption_names(["rain"])


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_is_the_package_definition_and_deterministic_per_image_and_severity(name):
    image = photo_crops()[0]  # a real photo, 70x90
    state = np.random.get_state()
    first = corrupt(image, name, 3, "img7")
    assert first.shape == image.shape and first.dtype == torch.uint8
    assert not torch.equal(first, image)
    assert torch.equal(corrupt(image, name, 3, "img7"), first)  # same key, same pixels
    assert np.array_equal(np.random.get_state()[1], state[1])  # the global generator is left as it was
    # the package itself, seeded the same way, gives these pixels
    seed = image_seed(name, 3, "img7")
    np.random.seed(seed)
    kwargs = {"seed": seed} if name in ("impulse_noise", "glass_blur") else {}
    expected = imagecorruptions.corrupt(image.permute(1, 2, 0).numpy(), severity=3, corruption_name=name, **kwargs)
    np.random.set_state(state)
    assert np.array_equal(first.permute(1, 2, 0).numpy(), expected)
    assert not torch.equal(corrupt(image, name, 5, "img7"), first)  # another severity differs


def test_random_corruptions_differ_between_images_and_small_images_are_refused():
    image = photo_crops()[0]
    assert not torch.equal(corrupt(image, "gaussian_noise", 1, "a"), corrupt(image, "gaussian_noise", 1, "b"))
    with pytest.raises(DatasetError, match="tiny: 20x40 is smaller than the 32x32 pixels"):
        corrupt(torch.zeros(3, 20, 40, dtype=torch.uint8), "fog", 1, "tiny")
    with pytest.raises(ConfigError, match="severity must be one of 1-5, got 6"):
        CorruptedDataset(random_case(0), "fog", 6)


def test_wrapper_corrupts_images_keeps_labels_and_metadata():
    data = random_case(0)
    wrapped = CorruptedDataset(data, "shot_noise", 2)
    image, label = wrapped.load(1)
    clean_image, clean_label = data.load(1)
    assert torch.equal(label, clean_label) and not torch.equal(image, clean_image)
    assert torch.equal(image, corrupt(clean_image, "shot_noise", 2, "img001"))
    assert (len(wrapped), wrapped.classes, wrapped.ignore_index, wrapped.sample_id(2)) == (
        4,
        data.classes,
        255,
        "img002",
    )
    assert torch.equal(wrapped.load_instances(1), data.load_instances(1))


def test_noise_measurably_lowers_miou_and_more_with_severity():
    data = random_case(1)  # the oracle reads the class off the red channel: noise flips its predictions
    model = OracleModel(3)
    clean = float(metrics.pooled_miou(ev.evaluate(model, data, gallery=0).per_image))
    noisy = [
        float(metrics.pooled_miou(ev.evaluate(model, CorruptedDataset(data, "gaussian_noise", s), gallery=0).per_image))
        for s in (1, 3, 5)
    ]
    assert clean - noisy[0] > 0.05 and noisy[0] > noisy[1] > noisy[2]
    # brightness leaves the oracle's classes mostly but not entirely intact: the benchmark sees the difference
    bright = float(
        metrics.pooled_miou(ev.evaluate(model, CorruptedDataset(data, "brightness", 5), gallery=0).per_image)
    )
    assert bright < clean


def test_summary_by_hand():
    results = [
        {"corruption": "gaussian_noise", "severity": 1, "miou": 0.6},
        {"corruption": "gaussian_noise", "severity": 5, "miou": 0.2},
        {"corruption": "fog", "severity": 1, "miou": 0.7},
        {"corruption": "fog", "severity": 5, "miou": 0.5},
    ]
    out = robustness_summary(0.8, results)
    assert out["mean_miou"] == pytest.approx(0.5) and out["relative_robustness"] == pytest.approx(0.625)
    assert out["severities"] == [1, 5]
    assert [(e["corruption"], e["mean_miou"], e["relative"]) for e in out["per_corruption"]] == [
        ("gaussian_noise", pytest.approx(0.4), pytest.approx(0.5)),
        ("fog", pytest.approx(0.6), pytest.approx(0.75)),
    ]
    assert [(e["severity"], e["mean_miou"]) for e in out["per_severity"]] == [
        (1, pytest.approx(0.65)),
        (5, pytest.approx(0.35)),
    ]
    assert robustness_summary(None, results)["relative_robustness"] is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ("--corruptions rain", "--corruptions: corruptions must be one of all, gaussian_noise"),
        ("--corruptions fog --severities 6", "--severities takes values from 1 to 5, got [6]"),
    ],
)
def test_bad_corruption_flags_are_one_line(tmp_path, capsys, argv, message):
    assert seglab(["test", str(tmp_path), *shlex.split(argv)]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_seglab_test_under_corruptions_writes_metrics_report_and_compare_columns(tmp_path, monkeypatch, capsys):
    """`seglab test --corruptions` wiring with the oracle stand-ins; compare shows the robustness columns."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "runargs.yaml").write_text("basenet: oracle\n")
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    data = random_case(2)

    def load_run(target, device="cpu", ema=False):
        config = TrainConfig(basenet="oracle", decoder="none", dataset="fake", crop=[64, 64])
        return LoadedRun(OracleModel(3), config, 100, list(data.classes), 255, target)

    monkeypatch.setattr(evaluation, "load_run", load_run)
    monkeypatch.setattr(evaluation, "build_dataset", lambda name, root, split, **options: data)
    argv = ["test", str(run), "--bootstrap", "20", "--workers", "0", "--device", "cpu"]
    assert seglab([*argv, "--corruptions", "gaussian_noise,contrast", "--severities", "1,5", "--eval-name", "c"]) == 0
    assert seglab([*argv, "--eval-name", "clean"]) == 0
    out = run / "eval" / "c"
    summary = json.loads((out / "metrics.json").read_text())
    robust = summary["corruptions"]
    assert [(r["corruption"], r["severity"]) for r in robust["results"]] == [
        ("gaussian_noise", 1),
        ("gaussian_noise", 5),
        ("contrast", 1),
        ("contrast", 5),
    ]
    assert robust["clean_miou"] == summary["miou"]
    noisy = robust["results"][1]
    reference = metrics.segmentation_metrics(
        ev.evaluate(OracleModel(3), CorruptedDataset(data, "gaussian_noise", 5), gallery=0).cm, data.classes
    )
    assert noisy["miou"] == reference["miou"] and noisy["per_class_iou"] == reference["per_class_iou"]
    assert noisy["miou_ci"][0] <= noisy["miou"] <= noisy["miou_ci"][1]
    assert robust["mean_miou"] == pytest.approx(np.mean([r["miou"] for r in robust["results"]]))
    assert robust["relative_robustness"] == pytest.approx(robust["mean_miou"] / summary["miou"])
    assert "gaussian_noise severity 5: mIoU" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "## Robustness under corruptions" in report and "![mIoU by severity](robustness.png)" in report
    assert f"| mean | {100 * robust['per_severity'][0]['mean_miou']:.1f} |" in report
    assert (out / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    assert "<h2>Robustness under corruptions</h2>" in (out / "report.html").read_text()
    result = compare([load_evaluation(run / "eval" / "c", ""), load_evaluation(run / "eval" / "clean", "")], 20)
    assert result["runs"][0]["relative_robustness"] == robust["relative_robustness"]
    assert result["runs"][1]["corrupted_miou"] is None
    text = markdown(result, None)
    assert "mIoU under corruption | relative robustness |" in text
    assert f"| {100 * robust['mean_miou']:.2f} | {robust['relative_robustness']:.3f} |" in text
    assert "the runs were corrupted differently" in text


@pytest.mark.slow
def test_seglab_test_corruptions_all_on_a_trained_run(tmp_path):
    run = train_tiny_run(tmp_path)
    argv = [
        "test",
        str(run),
        "--corruptions",
        "all",
        "--bootstrap",
        "20",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--limit",
        "2",
    ]
    assert seglab(argv) == 0
    summary = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    robust = summary["corruptions"]
    assert robust["severities"] == [1, 2, 3, 4, 5] and len(robust["results"]) == 75
    assert [e["corruption"] for e in robust["per_corruption"]] == list(CORRUPTIONS)
    assert all(set(r["per_class_iou"]) == set(summary["per_class_iou"]) for r in robust["results"])
