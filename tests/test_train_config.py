"""TrainConfig: one flag <-> one field <-> one YAML key; --config FILE overridden by flags; runargs round trip."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from seglab import config
from seglab.config import TrainConfig


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return parser.parse_args(argv)


def test_every_field_has_exactly_one_flag():
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    flags = {opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")}
    for name in config.FIELDS:
        assert config.flag(name) in flags
    assert "--no-flip" in flags and "--no-sync-bn" in flags


def test_defaults_without_flags_and_only_given_flags_are_explicit():
    args = parse(["--basenet", "resnet18", "--no-flip", "--scale-range", "0.75", "1.5", "--no-pad-mean"])
    assert config.explicit_flags(args) == {"basenet": "resnet18", "flip": False, "scale_range": [0.75, 1.5],
                                           "pad_mean": False}
    cfg = config.from_args(args)
    assert cfg == dataclasses.replace(TrainConfig(), basenet="resnet18", flip=False, scale_range=[0.75, 1.5],
                                      pad_mean=False)


def test_yaml_values_are_overridden_by_flags(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("basenet: vgg16\nlearnrate: 1\nflip: false\ncrop: [64]\n"
                    "decoder_options: {trainable_upsampling: true}\n")
    cfg = config.from_args(parse(["--config", str(path), "--basenet", "resnet18", "--flip"]))
    assert cfg.basenet == "resnet18" and cfg.flip is True  # flags win
    assert cfg.learnrate == 1.0 and isinstance(cfg.learnrate, float)  # YAML int accepted for a float key
    assert cfg.crop == [64, 64]  # one size means a square crop
    assert cfg.decoder_options == {"trainable_upsampling": True}


def test_runargs_round_trip(tmp_path):
    cfg = config.from_args(parse(["--decoder-options", "trainable_upsampling=true", "width=0.5",
                                  "--class-weights", "1", "2.5", "--crop", "32", "48", "--dataset", "synthetic"]))
    assert cfg.decoder_options == {"trainable_upsampling": True, "width": 0.5}
    path = tmp_path / "runargs.yaml"
    path.write_text(config.to_yaml(cfg))
    assert config.from_args(parse(["--config", str(path)])) == cfg
    assert list(config.read_yaml(path)) == list(config.FIELDS)  # every key, in field order


@pytest.mark.parametrize(("text", "message"), [
    ("basnet: vgg16\n", "unknown key 'basnet'"),
    ("epochs: ten\n", "epochs must be int, got 'ten'"),
    ("flip: 1\n", "flip must be bool, got 1"),
    ("decaylr: linear\n", "decaylr must be one of poly, cosine, step, none, got 'linear'"),
    ("crop: [1.5]\n", "crop must be a list of int"),
    ("- 1\n", "expected a mapping of config keys"),
])
def test_bad_yaml_is_an_error_naming_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.yaml") as err:
        config.from_args(parse(["--config", str(path)]))
    assert message in str(err.value)


def test_bad_flag_values_exit_with_usage_error(capsys):
    with pytest.raises(SystemExit):
        parse(["--decoder-options", "novalue"])
    assert "expected KEY=VALUE, got 'novalue'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--amp", "fp8"])


def test_differences_lists_changed_keys():
    old = TrainConfig()
    new = dataclasses.replace(old, crop=[64, 64], workers=0)
    assert config.differences(old, new, frozenset({"workers"})) == ["crop: [] -> [64, 64]"]
