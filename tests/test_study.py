"""`seglab study` end to end on the embedded dataset, its YAML checks, rank correlations, ImageNet top-1."""

from __future__ import annotations

import csv
import json
import re
import shutil

import pytest
import yaml
from scipy.stats import spearmanr

from seglab.bench import result_columns
from seglab.cli import main as seglab
from seglab.engine.checkpoint import load_run
from seglab.errors import ConfigError
from seglab.models import BASENETS, SEED_BASENETS, basenet_spec
from seglab.runs import RunDir
from seglab.study import correlations, read_study, result_row, spearman

TINY = {
    "basenets": ["resnet10t", "resnet18"],
    "decoders": ["fcn8s"],
    "train": {
        "dataset": "synthetic",
        "dataset_options": {"length": 4, "size": 32},
        "iters": 1,
        "batch_size": 2,
        "crop": [32, 32],
        "pretrained": "none",
        "workers": 0,
        "eval_every": 0,
        "device": "cpu",
    },
    "test": {"bootstrap": 50, "workers": 0, "device": "cpu"},
    "bench": {"size": 32, "backends": ["eager"], "warmup": 0, "repeats": 2, "threads": 1},
}


def test_study_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "study"
    assert seglab(["study", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["basenet"], r["decoder"]) for r in rows] == [("resnet10t", "fcn8s"), ("resnet18", "fcn8s")]
    for row in rows:
        run = out / "runs" / f"{row['basenet']}_fcn8s"
        metrics = json.loads((run / "eval" / "val" / "metrics.json").read_text())
        assert float(row["miou"]) == pytest.approx(100 * metrics["miou"])
        assert float(row["miou_ci_low"]) == pytest.approx(100 * metrics["miou_ci"][0])
        loaded = load_run(run)
        assert loaded.config.iters == 1 and loaded.config.basenet == row["basenet"]
        assert int(row["params"]) == sum(p.numel() for p in loaded.model.parameters())
        assert row["imagenet_top1"] == ""  # basenets trained from scratch: their ImageNet accuracy does not apply
        assert float(row["latency_ms_eager"]) > 0
    for plot in ("miou_vs_top1.png", "miou_vs_gflops.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Spearman, mIoU vs ImageNet top-1, all: n/a (n=0" in printed
    assert "| resnet18 | fcn8s |" in (out / "results.md").read_text()
    # A second run reuses the evaluated runs instead of training again.
    stamp = (out / "runs" / "resnet18_fcn8s" / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert seglab(["study", str(config), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("is trained and evaluated: reusing") == 2
    assert (out / "runs" / "resnet18_fcn8s" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    # A run without its evaluation is resumed (in its own folder) and evaluated; an edited YAML is refused.
    shutil.rmtree(out / "runs" / "resnet10t_fcn8s" / "eval")
    assert seglab(["study", str(config), "--out", str(out)]) == 0
    assert "resumed from" in (out / "runs" / "resnet10t_fcn8s" / "runlog").read_text()
    assert (out / "runs" / "resnet10t_fcn8s" / "eval" / "val" / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study", "tiny.yaml"]
    shutil.rmtree(out / "runs" / "resnet10t_fcn8s" / "eval")
    config.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "iters": 2}}))
    capsys.readouterr()
    assert seglab(["study", str(config), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "differ from its checkpoint" in err and "iters: 1 -> 2" in err
    cells = result_columns(out / "runs", "resnet18", "fcn8s", "synthetic")
    assert cells["mIoU % (95% CI)"].endswith("synthetic val") and cells["ImageNet top-1 %"] == "73.2"
    assert result_columns(out / "runs", "resnet18", "fcn8s", "voc")["mIoU % (95% CI)"] == "no run"
    assert result_columns(out / "runs", "vgg16", "fcn8s")["mIoU % (95% CI)"] == "no run"


@pytest.mark.parametrize("pretrained", ["imagenet", "none"])
def test_result_row_takes_top1_only_for_imagenet_weights(tmp_path, pretrained):
    run = tmp_path / "run"
    (run / "eval" / "val").mkdir(parents=True)
    (run / "runargs.yaml").write_text(yaml.safe_dump({"basenet": "mobilenet_v1", "pretrained": pretrained}))
    summary = {"miou": 0.5, "miou_ci": [0.25, 0.75], "dataset": {"name": "voc", "split": "val"}}
    measured = {
        "params": 10,
        "gflops": 1.5,
        "threads": 1,
        "latency": {"eager": 2.0},
        "latency_iqr": {"eager": (1.5, 3.0)},
    }
    row = result_row("mobilenet_v1", "fcnw", RunDir(run), summary, measured)
    assert (row["miou"], row["miou_ci_low"], row["miou_ci_high"], row["eval"]) == (50, 25, 75, "voc val")
    assert (row["latency_ms_eager"], row["latency_q1_ms_eager"], row["latency_q3_ms_eager"]) == (2.0, 1.5, 3.0)
    assert row["imagenet_top1"] == (BASENETS["mobilenet_v1"].top1.top1 if pretrained == "imagenet" else None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"basenets": ["vgg16"], "decoders": ["fcn8s"], "epochs": 3}, "unknown key 'epochs'; known keys: basenets,"),
        ({"basenets": [], "decoders": ["fcn8s"]}, "'basenets' must be a non-empty list"),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "train": {"basenet": "x"}},
            "train: basenet cannot be set here: the study sets them per run",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "train": {"learnrate": "fast"}},
            "train: learnrate must be float, got 'fast'",
        ),
        ({"basenets": ["vgg16"], "decoders": ["fcn8s"], "test": {"flip": "yes"}}, "test: flip must be bool, got 'yes'"),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "bench": {"fp16": True}},
            "bench: unknown key 'fp16'; known keys: runs, basenets,",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "bench": {"backends": ["tvm"]}},
            "bench: backends must be one of eager, channels_last, compile, onnxruntime, onnxruntime-int8, got 'tvm'",
        ),
    ],
)
def test_study_yaml_errors_name_the_file_and_key(tmp_path, capsys, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=rf"bad\.yaml: {re.escape(message)}"):
        read_study(path)
    assert seglab(["study", str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"bad.yaml: {message}" in err and len(err.strip().splitlines()) == 1


def test_spearman_by_hand_and_with_missing_values():
    rows = [
        {"imagenet_top1": x, "miou": y, "gflops": g, "decoder": d}
        for x, y, g, d in [(1, 1, 4, "a"), (2, 3, 3, "a"), (3, 2, 2, "a"), (4, 4, 1, "a"), (None, 9, 0, "b")]
    ]
    # ranks of x 1 2 3 4, of y 1 3 2 4: d^2 sum 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(rows, "imagenet_top1") == {
        "n": 4,
        "rho": pytest.approx(0.8),
        "p": pytest.approx(spearmanr([1, 2, 3, 4], [1, 3, 2, 4]).pvalue),
    }
    corr = correlations(rows)
    assert corr["all"]["gflops"]["n"] == 5
    assert corr["decoder b"]["imagenet_top1"] == {"n": 0, "rho": None, "p": None}


def test_imagenet_top1_for_every_seed_basenet():
    for basenet in SEED_BASENETS:
        top1 = basenet_spec(basenet).imagenet_top1()
        assert top1 is not None and 60 < top1.top1 < 90 and top1.source
    assert basenet_spec("googlenet").imagenet_top1() == basenet_spec("inception_v1").imagenet_top1()
    assert basenet_spec("vgg16").imagenet_top1().weights == "torchvision VGG16_Weights.IMAGENET1K_V1"
    assert basenet_spec("vgg16").imagenet_top1().top1 == 71.592
    assert basenet_spec("convnext_tiny").imagenet_top1() is None
