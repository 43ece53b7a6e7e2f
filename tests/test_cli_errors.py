"""Every subcommand answers a missing or wrong path, a folder that is no run, and an unreadable file with one
line, ``seglab CMD: error: ...`` naming the path, and exit status 1; a bug in seglab keeps its traceback."""

from __future__ import annotations

import argparse

import pytest

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
