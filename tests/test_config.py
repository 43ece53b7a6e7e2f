"""Typed configs of every command: one field <-> one flag <-> one YAML key; --config FILE overridden by flags;
YAML round trips; errors naming the file or flag and the key. Parametrized over every config dataclass in
`seglab.config`, so a new command's config is covered without editing a list."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex

import pytest
import yaml

from seglab import config
from seglab.cli import Parser, main
from seglab.cli.flags import add_config_arguments, config_from_args, explicit_values
from seglab.config import BenchConfig, CompareConfig, PredictConfig, TestConfig, TrainConfig
from seglab.errors import ConfigError, PathError

CONFIGS = [
    obj
    for obj in vars(config).values()
    if isinstance(obj, type)
    and dataclasses.is_dataclass(obj)
    and all("help" in f.metadata for f in dataclasses.fields(obj))
]
# Values for the fields a command cannot do without (positionals and required flags).
REQUIRED = {
    "run": "runs/r",
    "runs": ["runs/a", "runs/b"],
    "images": ["photo.png"],
    "out": "out",
    "dataset": "synthetic",
}


def parser_for(cls: type) -> argparse.ArgumentParser:
    parser = Parser(prog=f"seglab {cls.__name__}")
    add_config_arguments(parser, cls)
    return parser


def required_argv(cls: type) -> list[str]:
    """Return argv giving every required value of `cls` (positionals first, in field order)."""
    positional, flags = [], []
    for name, f in config.fields_of(cls).items():
        if not f.metadata["required"]:
            continue
        value = REQUIRED[name]
        values = value if isinstance(value, list) else [value]
        if f.metadata["positional"]:
            positional += values
        else:
            flags += [config.flag(name), *values]
    return positional + flags


def parse(cls: type, argv: list[str]):
    return config_from_args(cls, parser_for(cls).parse_args(required_argv(cls) + argv))


def test_every_command_has_a_config():
    assert {
        TrainConfig,
        TestConfig,
        PredictConfig,
        BenchConfig,
        CompareConfig,
        config.ExportConfig,
        config.StudyConfig,
        config.ModelsConfig,
        config.RunsConfig,
        config.DataCheckConfig,
        config.DataStatsConfig,
        config.DataConvertConfig,
    } <= set(CONFIGS)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_exactly_one_flag(cls, capsys):
    parser = parser_for(cls)
    by_dest: dict[str, list[str]] = {}
    for action in parser._actions:
        if action.dest not in ("help", "config"):
            by_dest.setdefault(action.dest, []).extend(action.option_strings or [action.dest])
    assert set(by_dest) == set(config.fields_of(cls))
    for name, f in config.fields_of(cls).items():
        visible = [o for o in by_dest[name] if o not in f.metadata["aliases"]]
        if f.metadata["positional"]:
            assert visible == [name]
        elif config.kind_of(cls, name).base is bool:
            assert visible == [config.flag(name), "--no-" + name.replace("_", "-")]
        else:
            assert visible == [config.flag(name)]
    parser.print_help()
    help_text = capsys.readouterr().out
    for f in config.fields_of(cls).values():
        for alias in f.metadata["aliases"]:  # old spellings still work but are not advertised
            assert not re.search(rf"{alias}(?![\w-])", help_text), alias


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_yaml_round_trip_keeps_every_key_in_field_order(cls, tmp_path):
    cfg = parse(cls, [])
    path = tmp_path / "cfg.yaml"
    path.write_text(config.to_yaml(cfg))
    assert list(config.read_yaml(cls, path)) == list(config.fields_of(cls))
    assert config.from_dict(cls, config.read_yaml(cls, path), str(path)) == cfg


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_unknown_keys_and_wrong_types_name_the_file_and_key(cls, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("no_such_key: 1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'no_such_key'; known keys: "):
        config.read_yaml(cls, path)
    name = next(n for n in config.fields_of(cls) if config.kind_of(cls, n).base not in (str, list))
    path.write_text(f"{name}: not-a-{config.kind_of(cls, name).base.__name__}\n")
    with pytest.raises(ConfigError, match=rf"bad\.yaml: {name} must be "):
        config.read_yaml(cls, path)


def test_train_defaults_without_flags_and_only_given_flags_are_explicit():
    parser = parser_for(TrainConfig)
    args = parser.parse_args(["--basenet", "resnet18", "--no-flip", "--scale-range", "0.75", "1.5", "--no-pad-mean"])
    assert explicit_values(TrainConfig, args) == {
        "basenet": "resnet18",
        "flip": False,
        "scale_range": [0.75, 1.5],
        "pad_mean": False,
    }
    assert config_from_args(TrainConfig, args) == dataclasses.replace(
        TrainConfig(), basenet="resnet18", flip=False, scale_range=[0.75, 1.5], pad_mean=False
    )


def test_yaml_values_are_overridden_by_flags(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "basenet: vgg16\nlearnrate: 1\nflip: false\ncrop: [64]\ndecoder_options: {trainable_upsampling: true}\n"
    )
    cfg = parse(TrainConfig, ["--config", str(path), "--basenet", "resnet18", "--flip"])
    assert cfg.basenet == "resnet18" and cfg.flip is True  # flags win
    assert cfg.learnrate == 1.0 and isinstance(cfg.learnrate, float)  # YAML int accepted for a float key
    assert cfg.crop == [64, 64]  # one size means a square crop
    assert cfg.decoder_options == {"trainable_upsampling": True}
    path.write_text("scales: [0.5, 1]\nflip: true\nbootstrap: 10\n")
    cfg = parse(TestConfig, ["--config", str(path), "--bootstrap", "20"])
    assert (cfg.scales, cfg.flip, cfg.bootstrap, cfg.run) == ([0.5, 1.0], True, 20, "runs/r")


def test_runargs_round_trip(tmp_path):
    cfg = parse(
        TrainConfig,
        shlex.split(
            "--decoder-options trainable_upsampling=true width=0.5 --class-weights 1 2.5 --crop 32 48 "
            "--dataset synthetic"
        ),
    )
    assert cfg.decoder_options == {"trainable_upsampling": True, "width": 0.5}
    path = tmp_path / "runargs.yaml"
    path.write_text(config.to_yaml(cfg))
    assert parse(TrainConfig, ["--config", str(path)]) == cfg


def test_lists_take_spaces_or_commas_but_paths_are_never_split():
    assert parse(TestConfig, ["--scales", "0.5,1", "1.5"]).scales == [0.5, 1.0, 1.5]
    assert parse(TestConfig, ["--checkpoints", "last,step_20"]).checkpoints == ["last", "step_20"]
    assert parse(BenchConfig, ["--size", "32", "48", "--backends", "eager,onnxruntime"]).size == [32, 48]
    args = parser_for(PredictConfig).parse_args(["runs/r", "a,b.png", "c.png", "--out", "o"])
    assert config_from_args(PredictConfig, args).images == ["a,b.png", "c.png"]


def test_old_flag_spellings_are_hidden_aliases():
    cfg = parse(TestConfig, ["--sliding-window", "64", "--stride", "40", "--name", "mine"])
    assert (cfg.window_step, cfg.eval_name) == (40, "mine")
    assert parse(BenchConfig, ["--batch", "4"]).batch_size == 4
    assert parse(CompareConfig, ["--eval", "val-flip"]).eval_name == "val-flip"


@pytest.mark.parametrize(
    ("cls", "argv", "message"),
    [
        (TestConfig, ["--window-step", "8"], "--window-step needs --sliding-window SIZE"),
        (
            TestConfig,
            ["--sliding-window", "8", "--window-step", "9"],
            "--window-step 9 is larger than --sliding-window 8",
        ),
        (TestConfig, ["--checkpoints", "last", "--last-k", "2"], "--checkpoints and --last-k choose checkpoints"),
        (TestConfig, ["--scales", "0"], "--scales: scales must be greater than 0, got 0.0"),
        (TestConfig, ["--last-k", "0"], "--last-k: last_k must be at least 1, got 0"),
        (TestConfig, ["--size-bins", "9", "3"], "--size-bins takes two increasing areas SMALL,MEDIUM, got [9, 3]"),
        (BenchConfig, ["--size", "1", "2", "3"], "--size takes S or H W, got 3 numbers"),
        (config.ExportConfig, ["--calibrate", "0"], "--calibrate: calibrate must be at least 1, got 0"),
        (PredictConfig, ["--batch-size", "0"], "--batch-size: batch_size must be at least 1, got 0"),
        (BenchConfig, ["--backends", "compile", "--warmup", "0"], "compile needs --warmup 1 or more"),
        (
            BenchConfig,
            ["--backends", "tvm"],
            "--backends: backends must be one of eager, channels_last, compile, onnxruntime, onnxruntime-int8, "
            "got 'tvm'",
        ),
        (TrainConfig, ["--crop", "1", "2", "3"], "--crop takes SIZE or HEIGHT WIDTH, got [1, 2, 3]"),
        (TrainConfig, ["--scale-range", "0.5"], "--scale-range takes MIN MAX, got [0.5]"),
    ],
)
def test_bad_values_are_config_errors_naming_the_flag(cls, argv, message):
    with pytest.raises(ConfigError) as err:
        parse(cls, argv)
    assert message in str(err.value)


def test_compare_needs_two_runs_and_required_flags_are_named():
    with pytest.raises(ConfigError, match="compare needs at least two runs, got 1"):
        config_from_args(CompareConfig, parser_for(CompareConfig).parse_args(["runs/a"]))
    with pytest.raises(ConfigError, match=r"--out is required \(see --help\)"):
        config_from_args(PredictConfig, parser_for(PredictConfig).parse_args(["runs/r", "x.png"]))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("basnet: vgg16\n", "unknown key 'basnet'"),
        ("epochs: ten\n", "epochs must be int, got 'ten'"),
        ("flip: 1\n", "flip must be bool, got 1"),
        ("decaylr: linear\n", "decaylr must be one of poly, cosine, step, none, got 'linear'"),
        ("crop: [1.5]\n", "crop must be a list of int"),
        ("- 1\n", "expected a mapping of config keys"),
        ("basenet: [unclosed\n", "bad.yaml:2: not valid YAML"),
    ],
)
def test_bad_yaml_is_an_error_naming_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as err:
        parse(TrainConfig, ["--config", str(path)])
    assert message in str(err.value)


def test_missing_config_file_is_a_path_error(tmp_path):
    with pytest.raises(PathError, match=r"config file .*nope\.yaml does not exist"):
        parse(TrainConfig, ["--config", str(tmp_path / "nope.yaml")])


def test_bad_flag_values_are_one_line_usage_errors(capsys):
    parser = parser_for(TrainConfig)
    for argv, message in (
        (["--decoder-options", "novalue"], "expected KEY=VALUE, got 'novalue'"),
        (["--amp", "fp8"], "argument --amp: invalid choice: 'fp8'"),
        (["--crop", "big"], "--crop: expected int values separated by spaces or commas"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 1
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_differences_lists_changed_keys():
    old = TrainConfig()
    new = dataclasses.replace(old, crop=[64, 64], workers=0)
    assert config.differences(old, new, frozenset({"workers"})) == ["crop: [] -> [64, 64]"]


def test_a_yaml_scalar_for_a_list_key_is_a_one_element_list(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("crop: 64\nplugins: my_decoders\n")
    assert config.read_yaml(TrainConfig, path) == {"crop": [64], "plugins": ["my_decoders"]}


NUMBERS = [
    (cls, name)
    for cls in CONFIGS
    for name in config.fields_of(cls)
    if int in (config.kind_of(cls, name).base, config.kind_of(cls, name).item)
    or float in (config.kind_of(cls, name).base, config.kind_of(cls, name).item)
]


def outside(meta: dict, number: type) -> list:
    """Values just outside a field's range (or not among its choices)."""
    if meta["choices"]:
        return [max(meta["choices"]) + 1]
    step = 1 if number is int else 0.5
    values = []
    if meta["minimum"] is not None:
        values.append(number(meta["minimum"] - step))
    if meta["above"] is not None:
        values.append(number(meta["above"]))
    if meta["maximum"] is not None:
        values.append(number(meta["maximum"] + step))
    if meta["below"] is not None:
        values.append(number(meta["below"]))
    return values


@pytest.mark.parametrize(("cls", "name"), NUMBERS, ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_every_number_has_a_range_and_values_outside_it_are_refused_naming_flag_value_and_range(cls, name, tmp_path):
    meta, kind = config.fields_of(cls)[name].metadata, config.kind_of(cls, name)
    number = kind.item or kind.base
    assert meta["choices"] or config.allowed_range(meta), f"{cls.__name__}.{name} declares no range"
    required = {k: REQUIRED[k] for k, f in config.fields_of(cls).items() if f.metadata["required"]}
    for bad in outside(meta, number):
        value = [bad] if kind.base is list else bad
        expected = (
            f"{name} must be one of {', '.join(map(str, meta['choices']))}, got {bad!r}"
            if meta["choices"]
            else f"{name} must be {config.allowed_range(meta)}, got {bad!r}"
        )
        if not meta["choices"]:  # argparse refuses other choices itself (a usage error)
            with pytest.raises(ConfigError) as err:
                parse(cls, [config.flag(name), *map(str, value if kind.base is list else [value])])
            assert str(err.value) == f"{config.flag(name)}: {expected}"
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump({name: value}))
        with pytest.raises(ConfigError) as err:
            config.read_yaml(cls, path)
        assert str(err.value) == f"{path}: {expected}"
        with pytest.raises(ConfigError) as err:  # a config built in Python is checked too
            cls(**required, **{name: value})
        assert str(err.value) == f"{config.flag(name)}: {expected}"


@pytest.mark.parametrize(
    ("cls", "name"),
    [(c, n) for c in CONFIGS for n, f in config.fields_of(c).items() if f.metadata["choices"]],
    ids=lambda x: x if isinstance(x, str) else x.__name__,
)
def test_choice_fields_refuse_other_values(cls, name):
    kind = config.kind_of(cls, name)
    bad = "no-such-choice" if (kind.item or kind.base) is str else -1
    required = {k: REQUIRED[k] for k, f in config.fields_of(cls).items() if f.metadata["required"]}
    with pytest.raises(ConfigError, match=f"^{config.flag(name)}: {name} must be one of "):
        cls(**required, **{name: [bad] if kind.base is list else bad})


TINY_TRAIN = shlex.split(
    "train --basenet lcnet_050 --decoder fcn8s --pretrained none --device cpu --dataset-options length=8 size=32 "
    "--crop 32 --batch-size 2 --iters 2 --workers 0 --eval-every 0"
)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--iters", "-5"], "--iters: iters must be at least 0, got -5"),
        (["--batch-size", "0"], "--batch-size: batch_size must be at least 1, got 0"),
        (["--ckpt-every", "0"], "--ckpt-every: ckpt_every must be at least 1, got 0"),
        (["--log-every", "0"], "--log-every: log_every must be at least 1, got 0"),
        (["--learnrate", "-1"], "--learnrate: learnrate must be greater than 0, got -1.0"),
        (["--eval-fraction", "0"], "--eval-fraction: eval_fraction must be in (0, 1], got 0.0"),
        (["--seed", "-1"], "--seed: seed must be in [0, 4294967295], got -1"),
        (["--momentum", "1", "--optimizer", "adamw"], "--momentum: momentum must be in [0, 1), got 1.0"),
        (["--crop", "16"], "--crop 16 16 is smaller than the network's stride 32 (basenet 'lcnet_050'"),
        (["--batch-size", "16"], "--batch-size 16: the training set has 8 samples, fewer than one batch"),
        (["--class-weights", "1", "2"], "--class-weights has 2 values for 6 classes"),
    ],
)
def test_a_refused_run_names_the_flag_and_leaves_nothing_behind(tmp_path, capsys, argv, message):
    assert main([*TINY_TRAIN, "--runs-root", str(tmp_path / "runs"), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"seglab train: error: {message}") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()
