"""The training configuration: one `TrainConfig` field <-> one `seglab train` flag <-> one runargs.yaml key.

Precedence is defaults < `--config FILE` (YAML) < flags given on the command line. The resolved config is
written to the run folder as runargs.yaml, which `--config` reads back unchanged, so a run is re-runnable.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def _meta(help: str, *, choices: tuple | None = None, metavar: str | None = None, item: type = float) -> dict:
    """Field metadata for a flag: help text, choices, metavar, and the element type of a list."""
    return {"help": help, "choices": choices, "metavar": metavar, "item": item}


def _opt(default: Any, help: str, *, choices: tuple | None = None) -> Any:
    """A dataclass field with an immutable default, carrying its flag's help text (and choices)."""
    return field(default=default, metadata=_meta(help, choices=choices))


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are a PASCAL VOC recipe for one GPU."""

    # model
    basenet: str = _opt("efficientnet_lite0", "feature extractor (see `seglab models`)")
    decoder: str = _opt("fcn8s", "decoder (see `seglab models`)")
    output_stride: int = _opt(32, "output stride of the basenet (dilation below 32)", choices=(8, 16, 32))
    pretrained: str = _opt("imagenet", "basenet weights: imagenet | package | timm:NAME | torchvision:WEIGHTS "
                           "| FILE | none")
    decoder_options: dict = field(default_factory=dict, metadata=_meta(
        "decoder options, e.g. trainable_upsampling=true", metavar="KEY=VALUE"))
    num_classes: int = _opt(0, "number of classes; 0 takes it from the dataset (a mismatch is an error)")
    # data
    dataset: str = _opt("", "dataset name; default: voc with --data-root, the embedded synthetic set without")
    data_root: str = _opt("", "dataset folder")
    dataset_options: dict = field(default_factory=dict, metadata=_meta(
        "dataset options, e.g. length=64 size=64 for synthetic", metavar="KEY=VALUE"))
    train_split: str = _opt("train", "split to train on")
    val_split: str = _opt("val", "split to validate on")
    crop: list = field(default_factory=list, metadata=_meta(
        "training crop: SIZE or HEIGHT WIDTH; default: the dataset's preset", metavar="PX", item=int))
    scale_range: list = field(default_factory=lambda: [0.5, 2.0], metadata=_meta(
        "random rescale range before cropping", metavar="S"))
    flip: bool = _opt(True, "random horizontal flips")
    jitter: float = _opt(0.0, "colour jitter strength (0: off)")
    pad_mean: bool = _opt(True, "pad crops with the FE's mean colour (0 after normalization); --no-pad-mean: black")
    workers: int = _opt(4, "DataLoader worker processes per rank")
    skip_bad_samples: bool = _opt(False, "skip (and count) unreadable samples instead of stopping")
    # optimization
    optimizer: str = _opt("sgd", "sgd (with momentum) or adamw", choices=("sgd", "adamw"))
    learnrate: float = _opt(0.01, "peak learning rate")
    momentum: float = _opt(0.9, "SGD momentum (adamw: beta1)")
    weight_decay: float = _opt(1e-4, "weight decay")
    batch_size: int = _opt(16, "global batch size (split across DDP ranks)")
    epochs: int = _opt(30, "epochs to train (ignored when --iters > 0)")
    iters: int = _opt(0, "iterations to train; 0 uses --epochs")
    decaylr: str = _opt("poly", "learning-rate decay", choices=("poly", "cosine", "step", "none"))
    warmup: int = _opt(0, "linear warm-up iterations")
    loss: str = _opt("ce", "cross-entropy, or OHEM cross-entropy", choices=("ce", "ohem"))
    class_weights: list = field(default_factory=list, metadata=_meta(
        "per-class loss weights (one per class)", metavar="W"))
    ohem_thresh: float = _opt(0.7, "OHEM: keep pixels whose true-class probability is below this")
    ohem_min_kept: int = _opt(100000, "OHEM: keep at least this many pixels per batch")
    freeze_bn: bool = _opt(False, "keep BatchNorm statistics frozen (eval mode) while training")
    sync_bn: bool = _opt(True, "synchronize BatchNorm statistics across GPUs under DDP")
    seed: int = _opt(0, "seed of weights init, data order and augmentation")
    # numerics and device
    device: str = _opt("auto", "cuda, cpu, or auto")
    amp: str = _opt("auto", "mixed precision; auto: bf16 on CUDA, off on CPU", choices=("auto", "bf16", "fp16", "off"))
    channels_last: bool = _opt(False, "channels-last memory format")
    compile: bool = _opt(False, "torch.compile the model")
    # monitoring and run folder
    runs_root: str = _opt("runs", "folder holding the run folders")
    run_name: str = _opt("", "run folder name; default <date>_<basenet>_<decoder>__<n>")
    log_every: int = _opt(20, "log loss, lr and throughput every N steps")
    eval_every: int = _opt(500, "mIoU on a random part of val every N steps (0: only at the end)")
    eval_fraction: float = _opt(0.25, "part of val drawn for each partial evaluation")
    eval_batch_size: int = _opt(1, "validation batch size per rank")
    ckpt_every: int = _opt(100, "write checkpoints/last.pt every N steps")
    keep: int = _opt(3000, "also keep a checkpoint every N steps (0: none)")
    resume: str = _opt("", "continue the run in this folder from its last checkpoint")

    def __post_init__(self) -> None:
        if len(self.crop) == 1:  # one size means a square crop
            self.crop = self.crop * 2
        if len(self.crop) not in (0, 2):
            raise ValueError(f"--crop takes SIZE or HEIGHT WIDTH, got {self.crop}")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Keys a resumed run may change; any other difference from the checkpoint's config is refused.
RESUME_MAY_CHANGE = frozenset({"workers", "log_every", "eval_every", "eval_batch_size", "ckpt_every", "keep",
                               "runs_root", "run_name", "resume", "data_root", "device", "compile"})


def _kind(f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(TrainConfig)[f.name]
    return hint if not isinstance(hint, types.UnionType) else typing.get_args(hint)[0]


def flag(name: str) -> str:
    """Return the command-line flag of config key `name`."""
    return "--" + name.replace("_", "-")


def parse_value(text: str) -> Any:
    """Parse one KEY=VALUE value the way YAML would (true, 3, 0.5, [1, 2], text)."""
    return yaml.safe_load(text)


def _key_values(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        out[key] = parse_value(value)
    return out


class _KeyValues(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, _key_values(values))
        except argparse.ArgumentTypeError as err:
            parser.error(f"{option_string}: {err}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--config` and one flag per TrainConfig field; unset flags stay out of the namespace."""
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="YAML file of config keys (e.g. a runargs.yaml); flags override it")
    for name, f in FIELDS.items():
        kind, meta = _kind(f), f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": f"{meta['help']} "
                                  f"(default: {default!r})"}
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is dict:
            kwargs.update(nargs="*", action=_KeyValues)
        elif kind is list:
            kwargs.update(nargs="*", type=meta["item"])
        else:
            kwargs["type"] = kind
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
        parser.add_argument(flag(name), **kwargs)


def _check_value(name: str, value: Any, source: str) -> Any:
    """Return `value` as field `name`'s type, or raise naming the source, key and expected type."""
    if name not in FIELDS:
        raise ValueError(f"{source}: unknown key {name!r}; known keys: {', '.join(FIELDS)}")
    f = FIELDS[name]
    kind = _kind(f)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is str and value is None:
        value = ""
    if kind is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{source}: {name} must be {kind.__name__}, got {value!r}")
    if kind is list:
        item = f.metadata["item"]
        if not all(isinstance(v, (item, int)) and not isinstance(v, bool) for v in value):
            raise ValueError(f"{source}: {name} must be a list of {item.__name__}, got {value!r}")
        value = [item(v) for v in value]
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ValueError(f"{source}: {name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def read_yaml(path: str | Path) -> dict:
    """Return the config keys of a YAML file, checked against TrainConfig (unknown key or bad type: error)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys, found {type(data).__name__}")
    return {k: _check_value(k, v, str(path)) for k, v in data.items()}


def explicit_flags(args: argparse.Namespace) -> dict:
    """Return the config keys given on the command line (flags left out are not in the namespace)."""
    return {k: _check_value(k, v, flag(k)) for k, v in vars(args).items() if k in FIELDS}


def from_args(args: argparse.Namespace) -> TrainConfig:
    """Return the config of defaults, overridden by `--config FILE`, overridden by explicit flags."""
    values = read_yaml(args.config) if getattr(args, "config", None) else {}
    values.update(explicit_flags(args))
    return TrainConfig(**values)


def from_dict(values: dict, source: str) -> TrainConfig:
    """Return a TrainConfig from a mapping (runargs, a checkpoint's config), checking every key."""
    return TrainConfig(**{k: _check_value(k, v, source) for k, v in values.items()})


def to_yaml(config: TrainConfig) -> str:
    """Return the config as YAML text (every key, in field order), readable by `--config`."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def differences(old: TrainConfig, new: TrainConfig, ignore: frozenset = frozenset()) -> list[str]:
    """Return 'key: old -> new' for each differing key not in `ignore`."""
    a, b = dataclasses.asdict(old), dataclasses.asdict(new)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in ignore and a[k] != b[k]]
