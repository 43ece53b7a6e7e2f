"""Every subcommand answers a missing or wrong path, a folder that is no run, an unreadable file, an output
folder that cannot be created, a value out of range and other user errors with one line, ``seglab CMD: error:
...`` naming the path or flag, and exit status 1; a bug in seglab keeps its traceback."""

from __future__ import annotations

import argparse
import shlex

import pytest
from deploy_fixtures import train_tiny_run
from PIL import Image
from test_data_check import jpeg_claiming

import seglab.cli
from seglab.cli import main


@pytest.fixture
def places(tmp_path):
    """A missing path, a folder that is no run, a garbage checkpoint, a garbage YAML and a broken evaluation."""
    (tmp_path / "plain").mkdir()
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    (tmp_path / "garbage.yaml").write_text("basenets: [unclosed\n")
    broken = tmp_path / "broken-eval"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json")
    (tmp_path / "img.png").write_bytes(b"")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "model.onnx").write_bytes(b"not onnx")
    return tmp_path


CASES = {
    "test, missing": (["test", "{missing}"], "seglab test: error: {missing} does not exist"),
    "test, no run": (["test", "{plain}"], "seglab test: error: {plain} is not a run folder"),
    "test, unreadable": (
        ["test", "{garbage}", "--out", "{plain}/o"],
        "seglab test: error: checkpoint {garbage} cannot be loaded",
    ),
    "test, onnx without export files": (
        ["test", "{onnx}", "--out", "{plain}/o"],
        "seglab test: error: {onnx}: neither export.json nor model.safetensors beside it",
    ),
    "export, missing": (["export", "{missing}"], "seglab export: error: {missing} does not exist"),
    "export, no run": (["export", "{plain}"], "seglab export: error: {plain} is not a run folder"),
    "export, unreadable": (["export", "{garbage}"], "seglab export: error: checkpoint {garbage} cannot be loaded"),
    "predict, missing": (
        ["predict", "{missing}", "{img}", "--out", "{plain}/o"],
        "seglab predict: error: {missing} does not exist",
    ),
    "predict, no run": (
        ["predict", "{plain}", "{img}", "--out", "{plain}/o"],
        "seglab predict: error: {plain} is not a run folder",
    ),
    "predict, unreadable": (
        ["predict", "{garbage}", "{img}", "--out", "{plain}/o"],
        "seglab predict: error: checkpoint {garbage} cannot be loaded",
    ),
    "bench, missing": (["bench", "{missing}", "--backends", "eager"], "seglab bench: error: {missing} does not exist"),
    "bench, no run": (["bench", "{plain}", "--backends", "eager"], "seglab bench: error: {plain} is not a run folder"),
    "bench, unreadable": (
        ["bench", "{garbage}", "--backends", "eager"],
        "seglab bench: error: checkpoint {garbage} cannot be loaded",
    ),
    "compare, missing": (["compare", "{missing}", "{missing}"], "seglab compare: error: {missing} does not exist"),
    "compare, no run": (
        ["compare", "{plain}", "{plain}"],
        "seglab compare: error: {plain} is neither a run folder nor an evaluation folder",
    ),
    "compare, unreadable": (
        ["compare", "{broken}", "{broken}"],
        "seglab compare: error: {broken}/metrics.json cannot be read",
    ),
    "study, missing": (["study", "{missing}"], "seglab study: error: config file {missing} does not exist"),
    "study, unreadable": (["study", "{garbage_yaml}"], "seglab study: error: {garbage_yaml}:2: not valid YAML"),
    "train resume, missing": (["train", "--resume", "{missing}"], "seglab train: error: {missing} does not exist"),
    "train resume, no run": (["train", "--resume", "{plain}"], "seglab train: error: {plain} is not a run folder"),
    "train config, missing": (
        ["train", "--config", "{missing}"],
        "seglab train: error: config file {missing} does not exist",
    ),
    "train config, unreadable": (
        ["train", "--config", "{garbage_yaml}"],
        "seglab train: error: {garbage_yaml}:2: not valid YAML",
    ),
    "runs, missing": (["runs", "--runs-root", "{missing}"], "seglab runs: error: runs root {missing} does not exist"),
    "data check, missing": (
        ["data", "check", "--dataset", "voc", "--data-root", "{missing}"],
        "seglab data check: error: voc: none of {missing}/VOCdevkit/VOC2012/",
    ),
    "data stats, no dataset": (
        ["data", "stats", "--dataset", "nosuchset"],
        "seglab data stats: error: unknown dataset 'nosuchset'",
    ),
    "models, unknown": (["models", "--basenets", "resnet_v9"], "seglab models: error: unknown basenet 'resnet_v9'"),
    "models, out of range": (["models", "--size", "0"], "seglab models: error: --size: size must be at least 1, got 0"),
    "train, out of range": (
        ["train", "--eval-fraction", "1.5"],
        "seglab train: error: --eval-fraction: eval_fraction must be in (0, 1], got 1.5",
    ),
    "train, malformed --pretrained": (
        shlex.split("train --basenet lcnet_050 --device cpu --pretrained {garbage} --runs-root {plain}/runs"),
        "seglab train: error: pretrained weights {garbage} cannot be loaded",
    ),
    "train, unknown timm weights": (
        shlex.split("train --basenet lcnet_050 --device cpu --pretrained timm:no_such_model_x --runs-root {plain}/r"),
        "seglab train: error: --pretrained timm:no_such_model_x: Unknown model (no_such_model_x)",
    ),
    "train, not a device": (["train", "--device", "gpu0"], "seglab train: error: --device 'gpu0' is not a device"),
    "train, unknown dataset option": (
        ["train", "--dataset-options", "lenght=4", "--device", "cpu"],
        "seglab train: error: --dataset-options for 'synthetic': got an unexpected keyword argument 'lenght'",
    ),
    "train, runs root is a file": (
        shlex.split("train --device cpu --pretrained none --basenet lcnet_050 --workers 0 --runs-root {garbage}"),
        "seglab train: error: --runs-root {garbage} cannot be created: {garbage} is a file, not a folder",
    ),
    "data stats, unknown dataset option": (
        ["data", "stats", "--dataset", "synthetic", "--dataset-options", "colour=red"],
        "seglab data stats: error: --dataset-options for 'synthetic': got an unexpected keyword argument 'colour'",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_user_errors_are_one_line_naming_the_path(case, places, capsys):
    argv, expected = CASES[case]
    names = {
        "missing": places / "missing",
        "plain": places / "plain",
        "garbage": places / "garbage.pt",
        "garbage_yaml": places / "garbage.yaml",
        "broken": places / "broken-eval",
        "img": places / "img.png",
        "onnx": places / "loose" / "model.onnx",
    }
    assert main([a.format(**names) for a in argv]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(expected.format(**names)), err
    assert "Traceback" not in err


def test_usage_errors_are_one_line_and_exit_1(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "run", "--no-such-flag"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == ("seglab test: error: unrecognized arguments: --no-such-flag (see `seglab test --help`)")


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise ZeroDivisionError("a bug")

    parser = seglab.cli.build_parser(["runs"])
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands.choices["runs"].set_defaults(_main=broken)
    monkeypatch.setattr(seglab.cli, "build_parser", lambda argv: parser)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        main(["runs"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run, and a folder with a GIF, a decompression bomb and a file where folders should go."""
    root = tmp_path_factory.mktemp("cli")
    Image.new("RGB", (20, 20)).save(root / "image.gif")
    Image.new("RGB", (20, 20)).save(root / "image.png")
    (root / "bomb.jpg").write_bytes(jpeg_claiming(20000, 10000))
    (root / "afile").write_text("a file, not a folder")
    return train_tiny_run(root / "runs"), root


RUN_CASES = {
    "test, --out is a file": (
        ["test", "{run}", "--out", "{afile}/eval", "--limit", "1", "--workers", "0"],
        "seglab test: error: evaluation folder {afile}/eval cannot be created: {afile} is a file, not a folder",
    ),
    "export, --out is a file": (
        ["export", "{run}", "--out", "{afile}"],
        "seglab export: error: --out {afile} cannot be created: {afile} is a file, not a folder",
    ),
    "predict, --out is a file": (
        ["predict", "{run}", "{root}/image.png", "--out", "{afile}", "--device", "cpu"],
        "seglab predict: error: --out {afile}/labels cannot be created: {afile} is a file, not a folder",
    ),
    "predict, a format photos do not come in": (
        ["predict", "{run}", "{root}/image.gif", "--out", "{root}/out", "--device", "cpu"],
        "seglab predict: error: {root}/image.gif: unreadable image: not a JPEG/PNG/BMP/TIFF/WEBP file",
    ),
    "predict, a decompression bomb": (
        ["predict", "{run}", "{root}/bomb.jpg", "--out", "{root}/out", "--device", "cpu"],
        "seglab predict: error: {root}/bomb.jpg: image is too large to decode safely",
    ),
    "bench, --csv is a folder": (
        ["bench", "{run}", "--backends", "eager", "--repeats", "1", "--warmup", "0", "--size", "32", "--csv", "{root}"],
        "seglab bench: error: cannot write {root}: Is a directory",
    ),
    "test, not a device": (
        ["test", "{run}", "--device", "tpu9"],
        "seglab test: error: --device 'tpu9' is not a device",
    ),
}


@pytest.mark.parametrize("case", RUN_CASES)
def test_user_errors_about_a_run_are_one_line(case, run, capsys):
    run_dir, root = run
    argv, expected = RUN_CASES[case]
    names = {"run": run_dir, "root": root, "afile": root / "afile"}
    assert main([a.format(**names) for a in argv]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(expected.format(**names)), err
