"""Typed configurations of every command: one dataclass field <-> one flag <-> one YAML key.

`TrainConfig` is `seglab train` (written to each run folder as runargs.yaml, which `--config` reads back
unchanged, so a run is re-runnable), `TestConfig` is `seglab test`, and so on for every subcommand. The
command layer (`seglab.cli.flags`) turns each field into a flag from the field's type and metadata;
precedence is defaults < `--config FILE` < flags on the command line. `seglab study` validates its YAML
sections `train`, `test` and `bench` with these same classes, so every key everywhere is checked the same
way: an unknown key or a wrongly typed value is a `ConfigError` naming the file (or flag) and the key.

Field types are str, int, float, bool, `list[T]`, dict and `T | None`; metadata holds the help text,
choices, a metavar, a range (`minimum`/`above` below, `maximum`/`below` above), whether the field is
positional, and old flag spellings kept as aliases. Every config class derives from `CheckedConfig`, so each
field is checked (type, choices, range) whenever a config is built, from flags, YAML or Python, and a bad
value is a `ConfigError` naming the flag, the value and the allowed range before anything is created.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from seglab.errors import ConfigError, PathError
from seglab.metrics.bootstrap import DEFAULT_RESAMPLES
from seglab.metrics.boundary import DEFAULT_DILATION_RATIO
from seglab.metrics.instances import COCO_AREA_BINS

SEED_BASENETS = ("vgg16", "inception_v1", "resnet18", "mobilenet_v1", "mobilenet_v2")
"""The five basenets of the seed framework (the default grid of `seglab models` and `seglab bench`)."""
BENCH_BACKENDS = ("eager", "channels_last", "compile", "onnxruntime", "onnxruntime-int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
"""How `seglab export --int8` calibrates activation ranges (ONNX Runtime's calibrators)."""
ONNX_OPSET = 18
"""The ONNX opset `seglab export` writes (the torch.export-based exporter needs 18 or newer)."""
MAX_SEED = 2**32 - 1
"""The largest seed (NumPy's seeds are 32-bit)."""
TRACKERS = ("tensorboard", "mlflow", "wandb")
"""Experiment trackers `seglab train --logger` writes to (mlflow and wandb are optional extras)."""
EXPORT_ATOL = 1e-3
"""The largest |ONNX Runtime - PyTorch| logit difference an export may show on its verification images."""
CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
"""The 15 ImageNet-C corruptions (noise, blur, weather, digital) of `seglab test --corruptions`, in order."""
SEVERITIES = (1, 2, 3, 4, 5)
LOSS_TERMS = ("ce", "ohem", "dice", "focal", "lovasz")
"""The pixel losses `--loss` combines (see `parse_loss` and seglab/engine/losses.py)."""


def option(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    metavar: str | None = None,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    positional: bool = False,
    required: bool = False,
    paths: bool = False,
    aliases: tuple[str, ...] = (),
) -> Any:
    """Return a dataclass field carrying its flag's metadata; list and dict defaults are copied per instance.

    `minimum`/`maximum` (inclusive) and `above`/`below` (exclusive) bound numbers (each item of a list);
    `required` marks a value the command cannot do without; `paths` marks a list of paths (never split at
    commas on the command line); `aliases` are old flag spellings, accepted but hidden from --help.
    """
    meta = {
        "help": help,
        "choices": choices,
        "metavar": metavar,
        "minimum": minimum,
        "above": above,
        "maximum": maximum,
        "below": below,
        "positional": positional,
        "required": required,
        "paths": paths,
        "aliases": aliases,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FieldKind:
    """What a field holds: `base` (str/int/float/bool/list/dict), list `item` type, whether None is allowed."""

    base: type
    item: type | None
    optional: bool

    def describe(self) -> str:
        """Return the type in words, for messages."""
        text = f"a list of {self.item.__name__}" if self.base is list else self.base.__name__
        return f"{text} or null" if self.optional else text


@cache
def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    """Return the fields of a config dataclass by name, in declaration order."""
    return {f.name: f for f in dataclasses.fields(cls)}


@cache
def kind_of(cls: type, name: str) -> FieldKind:
    """Return the FieldKind of field `name` of `cls`, from its type hint."""
    # An empty local namespace: a field named like a builtin (`list`, `format`) must not shadow it in hints.
    hint = typing.get_type_hints(cls, localns={})[name]
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    origin = typing.get_origin(hint)
    if origin is list:
        return FieldKind(list, typing.get_args(hint)[0], optional)
    return FieldKind(origin or hint, None, optional)


def default_of(f: dataclasses.Field) -> Any:
    """Return a field's default value."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def flag(name: str) -> str:
    """Return the command-line flag of config key `name`."""
    return "--" + name.replace("_", "-")


def as_flags(name: str, value: Any) -> str:
    """Return the command-line flags that set key `name` to `value` (e.g. `--crop 32 32`, `--no-flip`)."""
    if isinstance(value, bool):
        return flag(name) if value else "--no-" + name.replace("_", "-")
    if isinstance(value, list):
        return " ".join([flag(name), *map(str, value)])
    if isinstance(value, dict):
        return " ".join([flag(name), *(f"{k}={v}" for k, v in value.items())])
    if value is None or value == "":
        return f"{flag(name)} ''"
    return f"{flag(name)} {value}"


def parse_value(text: str) -> Any:
    """Parse one KEY=VALUE value the way YAML would (true, 3, 0.5, [1, 2], text)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _check_scalar(value: Any, kind: type) -> Any:
    """Return `value` as `kind`, or raise TypeError (ints are accepted for floats, bools never for numbers)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise TypeError
    return value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def allowed_range(meta: dict) -> str:
    """Return a field's numeric range in words ("at least 1", "in (0, 1]"); "" when it has none."""
    low, high = meta.get("minimum"), meta.get("maximum")
    low_open, high_open = meta.get("above"), meta.get("below")
    if (low is None and low_open is None) or (high is None and high_open is None):
        if low is not None:
            return f"at least {_number(low)}"
        if low_open is not None:
            return f"greater than {_number(low_open)}"
        if high is not None:
            return f"at most {_number(high)}"
        return f"less than {_number(high_open)}" if high_open is not None else ""
    left = f"[{_number(low)}" if low is not None else f"({_number(low_open)}"
    right = f"{_number(high)}]" if high is not None else f"{_number(high_open)})"
    return f"in {left}, {right}"


def _check_bounds(name: str, value: Any, meta: dict, source: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high = meta.get("minimum"), meta.get("maximum")
    low_open, high_open = meta.get("above"), meta.get("below")
    if (
        (low is not None and value < low)
        or (low_open is not None and value <= low_open)
        or (high is not None and value > high)
        or (high_open is not None and value >= high_open)
    ):
        raise ConfigError(f"{source}: {name} must be {allowed_range(meta)}, got {value!r}")


def check_value(cls: type, name: str, value: Any, source: str) -> Any:
    """Return `value` as field `name`'s type, or raise a ConfigError naming the source, key and expected type."""
    known = fields_of(cls)
    if name not in known:
        raise ConfigError(f"{source}: unknown key {name!r}; known keys: {', '.join(known)}")
    kind, meta = kind_of(cls, name), known[name].metadata
    if value is None and kind.optional:
        return None
    if value is None and kind.base is str:
        return ""
    if kind.base is list and isinstance(value, tuple):
        value = list(value)
    if kind.base is list and not isinstance(value, (list, dict)) and value is not None:
        value = [value]  # a YAML scalar for a list key is a one-element list (`crop: 512`)
    try:
        if kind.base is list:
            if not isinstance(value, list):
                raise TypeError
            value = [_check_scalar(v, kind.item) for v in value]
        else:
            value = _check_scalar(value, kind.base)
    except TypeError:
        raise ConfigError(f"{source}: {name} must be {kind.describe()}, got {value!r}") from None
    choices = meta.get("choices")
    for item in value if kind.base is list else [value]:
        if choices and item not in choices:
            raise ConfigError(f"{source}: {name} must be one of {', '.join(map(str, choices))}, got {item!r}")
        _check_bounds(name, item, meta, source)
    return value


def check_fields(config: Any) -> None:
    """Check every field of a config instance (type, choices, range), naming its flag; ints given for floats
    and tuples given for lists are converted in place."""
    cls = type(config)
    for name, f in fields_of(cls).items():
        source = name if f.metadata.get("positional") else flag(name)
        setattr(config, name, check_value(cls, name, getattr(config, name), source))


class CheckedConfig:
    """Base of every command's config dataclass: its fields are checked as soon as it is built (a
    subclass's own `__post_init__` calls this one first)."""

    def __post_init__(self) -> None:
        check_fields(self)


def from_dict(cls: type, values: dict, source: str) -> Any:
    """Return a `cls` from a mapping (a YAML file, a checkpoint's config), checking every key and value."""
    checked = {k: check_value(cls, k, v, source) for k, v in values.items()}
    try:
        return cls(**checked)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def check_section(cls: type, values: Any, source: str, *, reserved: tuple[str, ...] = ()) -> dict:
    """Return a partial mapping of `cls` keys (a study YAML section) with every key and value checked.

    `reserved` keys are set by the caller and may not appear.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{source} must be a mapping of keys, got {values!r}")
    fixed = sorted(set(values) & set(reserved))
    if fixed:
        raise ConfigError(f"{source}: {', '.join(fixed)} cannot be set here: the study sets them per run")
    return {k: check_value(cls, k, v, source) for k, v in values.items()}


def load_yaml(path: str | Path, what: str = "config file") -> dict:
    """Return the mapping in a YAML file; a missing file, invalid YAML or a non-mapping is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise PathError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PathError(f"{what} {path} cannot be read: {err}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, found {type(data).__name__}")
    return data


def read_yaml(cls: type, path: str | Path) -> dict:
    """Return the keys of a YAML config file, each checked against `cls` (unknown key or bad type: error)."""
    return {k: check_value(cls, k, v, str(path)) for k, v in load_yaml(path).items()}


def to_dict(config: Any) -> dict:
    """Return a config as a plain mapping (every key, in field order)."""
    return dataclasses.asdict(config)


def to_yaml(config: Any) -> str:
    """Return a config as YAML text (every key, in field order), readable by `--config`."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def differences(old: Any, new: Any, ignore: frozenset = frozenset()) -> list[str]:
    """Return 'key: old -> new' for each differing key not in `ignore`."""
    a, b = to_dict(old), to_dict(new)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if k not in ignore and a[k] != b[k]]


PLUGINS_HELP = (
    "modules to import first, registering basenets, decoders or datasets (also SEGLAB_PLUGINS and "
    "the `seglab.plugins` entry points)"
)
DEVICE_HELP = "cuda, cpu, or auto (this rank's GPU when CUDA is available)"


@dataclass
class TrainConfig(CheckedConfig):
    """Everything that defines a training run. Defaults are a PASCAL VOC recipe for one GPU."""

    # model
    basenet: str = option("efficientnet_lite0", "basenet: the feature extractor (see `seglab models`)")
    decoder: str = option("fcn8s", "decoder (see `seglab models`)")
    output_stride: int = option(32, "output stride of the basenet (dilation below 32)", choices=(8, 16, 32))
    pretrained: str = option(
        "imagenet", "basenet weights: imagenet | package | timm:NAME | torchvision:WEIGHTS | FILE | none"
    )
    decoder_options: dict = option({}, "decoder options, e.g. trainable_upsampling=true", metavar="KEY=VALUE")
    num_classes: int = option(0, "number of classes; 0 takes it from the dataset (a mismatch is an error)", minimum=0)
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")
    init_from: str = option(
        "",
        "fine-tune: start basenet and decoder from this seglab run folder or checkpoint (its EMA weights when it "
        "has them); --basenet, --decoder, --output-stride and --decoder-options default to its",
        metavar="RUN",
    )
    class_map: list[str] = option(
        [],
        "with --init-from: classes of the same name keep their classifier weights; OLD=NEW pairs (names or "
        "indices) carry other ones over (or override a name match)",
        metavar="OLD=NEW",
    )
    # data
    dataset: str = option("", "dataset name; default: voc with --data-root, the embedded synthetic set without")
    data_root: str = option("", "dataset folder")
    dataset_options: dict = option({}, "dataset options, e.g. length=64 size=64 for synthetic", metavar="KEY=VALUE")
    train_split: str = option("train", "split to train on")
    val_split: str = option("val", "split to validate on")
    crop: list[int] = option(
        [], "training crop: SIZE or HEIGHT WIDTH; default: the dataset's preset", metavar="PX", minimum=1
    )
    scale_range: list[float] = option([0.5, 2.0], "random rescale range before cropping", metavar="S", above=0)
    flip: bool = option(True, "random horizontal flips")
    jitter: float = option(0.0, "colour jitter strength (0: off)", minimum=0, below=1)
    pad_mean: bool = option(
        True, "pad crops with the basenet's mean colour (0 after normalization); --no-pad-mean: black"
    )
    workers: int = option(4, "DataLoader worker processes per rank", minimum=0)
    skip_bad_samples: bool = option(False, "skip (and count) unreadable samples instead of stopping")
    allow_ignore_only_labels: bool = option(
        False,
        "train even when the labels hold only 0 and the ignore index (refused by default: the foreground of "
        "a binary mask saved as 0/255 would be ignored, not learned)",
    )
    # optimization
    optimizer: str = option("sgd", "sgd (with momentum) or adamw", choices=("sgd", "adamw"))
    learnrate: float = option(0.01, "peak learning rate", above=0)
    momentum: float = option(0.9, "SGD momentum (adamw: beta1)", minimum=0, below=1)
    weight_decay: float = option(1e-4, "weight decay", minimum=0)
    batch_size: int = option(16, "global batch size (split across DDP ranks)", minimum=1)
    epochs: int = option(30, "epochs to train (ignored when --iters > 0)", minimum=1)
    iters: int = option(0, "iterations to train; 0 uses --epochs", minimum=0)
    decaylr: str = option("poly", "learning-rate decay", choices=("poly", "cosine", "step", "none"))
    warmup: int = option(0, "linear warm-up iterations", minimum=0)
    loss: str = option(
        "ce",
        f"loss: one of {', '.join(LOSS_TERMS)}, or a weighted sum such as ce+dice or 0.7*ce+0.3*lovasz",
        metavar="SPEC",
    )
    class_weights: list[float] = option([], "per-class loss weights (one per class)", metavar="W", minimum=0)
    ohem_thresh: float = option(0.7, "OHEM: keep pixels whose true-class probability is below this", above=0, maximum=1)
    ohem_min_kept: int = option(100000, "OHEM: keep at least this many pixels per batch", minimum=0)
    focal_gamma: float = option(
        2.0, "focal loss: the focusing exponent gamma (0: sigmoid cross-entropy)", minimum=0, maximum=100
    )
    aux_weight: float = option(
        0.0, "weight of the auxiliary FCN head's loss on the stride-16 tap (0: no auxiliary head)", minimum=0
    )
    freeze_bn: bool = option(False, "keep BatchNorm statistics frozen (eval mode) while training")
    sync_bn: bool = option(True, "synchronize BatchNorm statistics across GPUs under DDP")
    seed: int = option(0, "seed of weights init, data order and augmentation", minimum=0, maximum=MAX_SEED)
    freeze_basenet: bool = option(
        False, "keep the basenet's weights and BatchNorm statistics fixed: only the decoder trains"
    )
    unfreeze_at: int = option(
        0, "with --freeze-basenet: the basenet trains too after this many steps (0: never)", metavar="STEP", minimum=0
    )
    difflr: float = option(
        1.0,
        "decoder learning rate = DIFFLR x --learnrate (the basenet's); the seed used 10",
        metavar="FACTOR",
        above=0,
        maximum=1000,
    )
    accumulate: int = option(
        1,
        "gradient accumulation: each --batch-size batch runs as N forward/backward passes of batch/N images",
        metavar="N",
        minimum=1,
        maximum=1024,
    )
    clip_grad: float = option(
        0.0,
        "clip the global gradient norm to NORM (0: off); the norm before clipping is logged",
        metavar="NORM",
        minimum=0,
    )
    ema: float = option(
        0.0,
        "keep an exponential moving average of the weights with this decay, e.g. 0.999 (0: off); saved in "
        "checkpoints, evaluated with the weights, used by `seglab test`",
        metavar="DECAY",
        minimum=0,
        below=1,
    )
    # numerics and device
    device: str = option("auto", DEVICE_HELP)
    amp: str = option(
        "auto", "mixed precision; auto: bf16 on CUDA, off on CPU", choices=("auto", "bf16", "fp16", "off")
    )
    channels_last: bool = option(False, "channels-last memory format")
    compile: bool = option(False, "torch.compile the model")
    # monitoring and run folder
    runs_root: str = option("runs", "folder holding the run folders")
    run_name: str = option("", "run folder name; default <date>_<basenet>_<decoder>__<n>")
    log_every: int = option(20, "log loss, lr and throughput every N steps", minimum=1)
    eval_every: int = option(500, "mIoU on a random part of val every N steps (0: only at the end)", minimum=0)
    eval_fraction: float = option(0.25, "part of val drawn for each partial evaluation", above=0, maximum=1)
    eval_batch_size: int = option(1, "validation batch size per rank", minimum=1)
    eval_full_every: int = option(0, "mIoU on the full val set every N steps (0: only at the end)", minimum=0)
    keep_best: bool = option(
        False, "keep checkpoints/best.pt, the checkpoint of the best full-val mIoU (needs --eval-full-every)"
    )
    ckpt_every: int = option(100, "write checkpoints/last.pt every N steps", minimum=1)
    keep: int = option(3000, "also keep a checkpoint every N steps (0: none)", minimum=0)
    logger: list[str] = option(
        ["tensorboard"],
        "experiment trackers besides runlog and metrics.jsonl (mlflow: pip install 'seglab[mlflow]', "
        "wandb: 'seglab[wandb]')",
        choices=TRACKERS,
        metavar="NAME",
    )
    resume: str = option(
        "", "continue the run in this folder from its last checkpoint (a larger --iters or --epochs extends it)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.crop) == 1:  # one size means a square crop
            self.crop = self.crop * 2
        if len(self.crop) not in (0, 2):
            raise ConfigError(f"--crop takes SIZE or HEIGHT WIDTH, got {self.crop}")
        if len(self.scale_range) != 2:
            raise ConfigError(f"--scale-range takes MIN MAX, got {self.scale_range}")
        if self.scale_range[0] > self.scale_range[1]:
            raise ConfigError(f"--scale-range takes MIN MAX with MIN <= MAX, got {self.scale_range}")
        check_training_options(self)


def check_training_options(cfg: TrainConfig) -> None:
    """Refuse combinations of the fine-tuning, EMA and best-checkpoint flags that cannot work."""
    if cfg.class_map and not cfg.init_from:
        raise ConfigError("--class-map maps the classes of --init-from RUN: give --init-from too")
    if cfg.unfreeze_at and not cfg.freeze_basenet:
        raise ConfigError(f"--unfreeze-at {cfg.unfreeze_at} needs --freeze-basenet (the basenet is not frozen)")
    if cfg.keep_best and not cfg.eval_full_every:
        raise ConfigError("--keep-best chooses by full-val mIoU: give --eval-full-every N too")
    terms = parse_loss(cfg.loss)
    if cfg.accumulate > 1 and any(name == "ohem" for name, _ in terms) and (len(terms) > 1 or cfg.aux_weight > 0):
        raise ConfigError(
            f"--accumulate {cfg.accumulate} with --loss {cfg.loss}"
            + (f" and --aux-weight {cfg.aux_weight}" if cfg.aux_weight > 0 else "")
            + ": OHEM's kept pixels are known only after every pass, so it accumulates exactly only as the one "
            "term; use --accumulate 1 or OHEM alone without an auxiliary head"
        )
    for pair in cfg.class_map:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise ConfigError(f"--class-map takes OLD=NEW pairs, got {pair!r}")


def parse_loss(spec: str) -> list[tuple[str, float]]:
    """Return the (term, weight) pairs of a `--loss` value: `ce`, `ce+dice`, `0.7*ce+0.3*lovasz`, ..."""
    terms: dict[str, float] = {}
    for part in spec.replace(" ", "").split("+"):
        weight_text, _, name = part.rpartition("*")
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            weight = float("nan")
        if name not in LOSS_TERMS:
            problem = f"unknown term {name!r}"
        elif name in terms:
            problem = f"{name!r} appears twice"
        elif not weight > 0:
            problem = f"the weight {weight_text!r} of {name!r} is not a positive number"
        else:
            terms[name] = weight
            continue
        raise ConfigError(
            f"--loss {spec!r}: {problem}; give one of {', '.join(LOSS_TERMS)} or a sum of them with optional "
            "weights, e.g. ce+dice or 0.7*ce+0.3*lovasz"
        )
    return list(terms.items())


# Keys a resumed run may change; any other difference from the checkpoint's config is refused.
RESUME_MAY_CHANGE = frozenset(
    {
        "workers",
        "allow_ignore_only_labels",
        "log_every",
        "eval_every",
        "eval_batch_size",
        "ckpt_every",
        "keep",
        "runs_root",
        "run_name",
        "resume",
        "data_root",
        "device",
        "compile",
        "plugins",
        "eval_full_every",
        "keep_best",
        "logger",
        "accumulate",
    }
)
RESUME_MAY_EXTEND = frozenset({"iters", "epochs"})
"""Keys a resumed run may raise (never lower): `seglab train --resume RUN --iters N` extends a run."""


@dataclass
class InferenceOptions(CheckedConfig):
    """Test-time inference shared by `seglab test` and `seglab predict`: scales, flip, sliding window."""

    scales: list[float] = option(
        [1.0], "test scales; softmax probabilities are resized back and averaged", metavar="S", above=0
    )
    flip: bool = option(False, "also average the horizontally flipped image")
    sliding_window: int | None = option(
        None,
        "infer SIZE x SIZE windows (averaging overlaps) instead of the whole image, e.g. 1024 for Cityscapes 1024x2048",
        metavar="SIZE",
        minimum=1,
    )
    window_step: int | None = option(
        None,
        "sliding-window step in pixels (default 2/3 of the window)",
        metavar="PX",
        minimum=1,
        aliases=("--stride",),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.scales:
            raise ConfigError("--scales needs at least one scale")
        if self.window_step is not None and self.sliding_window is None:
            raise ConfigError("--window-step needs --sliding-window SIZE")
        if self.window_step is not None and self.window_step > self.sliding_window:
            raise ConfigError(
                f"--window-step {self.window_step} is larger than --sliding-window "
                f"{self.sliding_window}: windows would leave gaps"
            )


@dataclass
class TestConfig(InferenceOptions):
    """`seglab test`: evaluate a run's checkpoint(s) on a dataset split; metrics with CIs and a report."""

    __test__ = False  # not a pytest test class

    run: str = option(
        "",
        "run folder (uses checkpoints/last.pt), a checkpoint file, or an exported .onnx model (fp32 or INT8)",
        positional=True,
        required=True,
        metavar="RUN",
    )
    split: str = option("val", "dataset split to evaluate")
    out: str = option("", "output folder (default RUN/eval/NAME)")
    eval_name: str = option(
        "",
        "name of the evaluation folder RUN/eval/NAME (default: the split plus test options, e.g. val-ms0.5,1,1.5-flip)",
        aliases=("--name",),
    )
    checkpoints: list[str] = option(
        [],
        "checkpoints of the run to evaluate and compare, e.g. "
        "last,step_2000,step_3000 (the first gets the full report)",
        metavar="NAME",
    )
    last_k: int | None = option(None, "evaluate the K newest step checkpoints", metavar="K", minimum=1)
    bootstrap: int = option(DEFAULT_RESAMPLES, "bootstrap resamples over images for the CI", metavar="N", minimum=1)
    seed: int = option(0, "seed of the bootstrap", minimum=0, maximum=MAX_SEED)
    gallery: int = option(8, "worst images shown in the report", metavar="K", minimum=0)
    size_bins: list[int] = option(
        list(COCO_AREA_BINS), "object area edges in pixels: small/medium and medium/large", metavar="PX", minimum=1
    )
    boundary_ratio: float = option(
        DEFAULT_DILATION_RATIO, "Boundary IoU band width as a share of the image diagonal", above=0, maximum=1
    )
    corruptions: list[str] = option(
        [],
        "also evaluate under these ImageNet-C corruptions (all: the 15), each at every --severities",
        choices=("all", *CORRUPTIONS),
        metavar="NAME",
    )
    severities: list[int] = option(list(SEVERITIES), "corruption severities, 1 (mild) to 5", metavar="S", minimum=1)
    dataset: str = option("", "dataset name (default: the run's)")
    data_root: str = option("", "dataset root (default: the run's)")
    device: str = option("auto", DEVICE_HELP)
    limit: int | None = option(None, "evaluate only the first N images", metavar="N", minimum=1)
    workers: int = option(2, "data-loading processes", minimum=0)
    batch_size: int = option(
        4, "images per forward pass; only images of one size share a batch unless --pad-batches", minimum=1
    )
    pad_batches: bool = option(
        False,
        "batch images of different sizes too, padded to the largest (labels with the ignore index, predictions "
        "cropped back); padding can change predictions slightly near the bottom and right edges",
    )
    amp: str = option(
        "auto", "mixed precision of inference; auto: bf16 on CUDA, off on CPU", choices=("auto", "bf16", "fp16", "off")
    )
    channels_last: bool = option(
        False, "run the model channels-last (often faster on CPUs; logits may differ in the last bits)"
    )
    ema: bool = option(True, "evaluate a checkpoint's EMA weights when it has them (--no-ema: the trained weights)")
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.checkpoints and self.last_k is not None:
            raise ConfigError("--checkpoints and --last-k choose checkpoints in two ways: give one of them")
        if len(self.size_bins) != 2 or self.size_bins[0] >= self.size_bins[1]:
            raise ConfigError(f"--size-bins takes two increasing areas SMALL,MEDIUM, got {self.size_bins}")
        if not self.severities or not set(self.severities) <= set(SEVERITIES):
            raise ConfigError(f"--severities takes values from 1 to 5, got {self.severities}")


@dataclass
class PredictConfig(InferenceOptions):
    """`seglab predict`: segment image files with a run; label PNGs, overlays and probabilities."""

    run: str = option(
        "",
        "run folder (uses checkpoints/last.pt), a checkpoint file, or an exported .onnx model",
        positional=True,
        required=True,
        metavar="RUN",
    )
    images: list[str] = option(
        [],
        "image and video (.mp4 .mkv .avi .webm) files, folders and glob patterns (quote them)",
        positional=True,
        required=True,
        paths=True,
        metavar="IMAGE",
    )
    out: str = option("", "output folder", required=True)
    save_probs: str | None = option(
        None, "also write float16 class probabilities [K, H, W] in this format", choices=("npy", "safetensors")
    )
    batch_size: int = option(8, "video frames segmented per forward pass", metavar="N", minimum=1)
    frame_labels: bool = option(False, "also write each video frame's label PNG: labels/<video>/000001.png ...")
    device: str = option("auto", DEVICE_HELP)
    ema: bool = option(
        True, "use a checkpoint's EMA weights when it has them, as `seglab test` does (--no-ema: the trained weights)"
    )
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")


@dataclass
class ExportConfig(CheckedConfig):
    """`seglab export`: a run's model as ONNX (dynamic batch, height, width; verified) and safetensors."""

    run: str = option(
        "", "run folder (uses checkpoints/last.pt) or a checkpoint file", positional=True, required=True, metavar="RUN"
    )
    format: str = option("onnx", "export format; safetensors weights are always written too", choices=("onnx",))
    out: str = option("", "output folder (default RUN/export)")
    opset: int = option(ONNX_OPSET, "ONNX opset", minimum=18)
    atol: float = option(EXPORT_ATOL, "largest allowed |ONNX - PyTorch| logit difference", above=0)
    verify_images: list[str] = option(
        [],
        "images to compare ONNX Runtime with PyTorch on (default: "
        "scikit-image's astronaut 512x512 and chelsea 300x451 photos)",
        metavar="IMAGE",
        paths=True,
    )
    int8: bool = option(
        False,
        "also write model_int8.onnx: static INT8 quantization (QDQ, per-channel weights), with its argmax "
        "agreement and mIoU against fp32 on --verify-split",
    )
    calibrate: int = option(
        100, "with --int8: training images (drawn at random) that calibrate activations", metavar="N", minimum=1
    )
    calibration: str = option(
        "minmax", "with --int8: how activation ranges are calibrated", choices=CALIBRATION_METHODS
    )
    calibrate_split: str = option(
        "", "with --int8: split of the calibration images (default: the run's training split)"
    )
    reduce_range: bool = option(False, "with --int8: 7-bit weights, for x86 CPUs without VNNI (avoids saturation)")
    verify_split: str = option("val", "with --int8: split on which the fp32 and INT8 models are compared")
    verify_limit: int = option(
        500, "with --int8: compare on the first N images of --verify-split (0: all)", metavar="N", minimum=0
    )
    data_root: str = option("", "with --int8: dataset root of the run's dataset (default: the run's)")
    ema: bool = option(
        True,
        "export a checkpoint's EMA weights when it has them, as `seglab test` evaluates them (--no-ema: the "
        "trained weights)",
    )
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")


@dataclass
class BenchConfig(CheckedConfig):
    """`seglab bench`: params, GFLOPs and latency of runs or of a basenet x decoder grid."""

    runs: list[str] = option(
        [],
        "run folders or checkpoints to benchmark (default: the --basenets x --decoders grid with random weights)",
        positional=True,
        paths=True,
        metavar="RUN",
    )
    basenets: list[str] = option(list(SEED_BASENETS), "basenets of the grid", metavar="NAME")
    decoders: list[str] = option(["fcn8s"], "decoders of the grid", metavar="NAME")
    num_classes: int = option(21, "classes of the grid models", minimum=1)
    size: list[int] = option([512], "input size: S (square) or H W", metavar="PX", minimum=1)
    batch_size: int = option(1, "images per forward pass", minimum=1, aliases=("--batch",))
    backends: list[str] = option(
        ["eager", "channels_last", "onnxruntime"], "backends to time", choices=BENCH_BACKENDS, metavar="NAME"
    )
    device: str = option("auto", DEVICE_HELP)
    threads: int = option(
        0, "CPU threads for PyTorch and ONNX Runtime (0: torch.get_num_threads())", minimum=0, maximum=1024
    )
    warmup: int = option(3, "untimed runs first", minimum=0)
    repeats: int = option(10, "timed runs", minimum=1)
    miou_from: str = option(
        "",
        "add mIoU (95% CI) and ImageNet top-1 columns: the newest evaluated run of "
        "each pair under this runs root, 'no run' where none exists",
        metavar="RUNS_ROOT",
    )
    miou_dataset: str = option("", "with --miou-from: only evaluations on this dataset (default any)", metavar="NAME")
    csv: str = option("", "write one row per model and backend here", metavar="FILE")
    md: str = option("", "write the Markdown table here", metavar="FILE")
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.size) == 1:
            self.size = self.size * 2
        if len(self.size) != 2:
            raise ConfigError(f"--size takes S or H W, got {len(self.size)} numbers")
        if "compile" in self.backends and self.warmup < 1:
            raise ConfigError("--backends compile needs --warmup 1 or more, so that compiling is not timed")


@dataclass
class ProbeConfig(CheckedConfig):
    """The study's linear probe of a basenet: a 1x1 classifier on one tap of the frozen basenet, trained briefly."""

    steps: int = option(300, "training steps of the probe (0: no probe)", minimum=0)
    tap: int = option(16, "output stride of the tap the classifier reads", choices=(4, 8, 16, 32))
    learnrate: float = option(0.01, "Adam learning rate of the classifier", above=0)
    batch_size: int = option(8, "training crops per step", minimum=1)
    limit: int | None = option(None, "score the probe on only the first N images of the test split", minimum=1)


STUDY_LAUNCHERS = ("local", "submitit_local", "slurm")


@dataclass
class StudyConfig(CheckedConfig):
    """`seglab study`: a basenet x decoder x grid study, trained once per seed, evaluated, measured and explained."""

    basenets: list[str] = option([], "basenets of the grid", metavar="NAME")
    decoders: list[str] = option([], "decoders of the grid", metavar="NAME")
    train: dict = option({}, "`seglab train` keys shared by every run (TrainConfig)", metavar="KEY=VALUE")
    test: dict = option({}, "`seglab test` keys (TestConfig)", metavar="KEY=VALUE")
    bench: dict = option({}, "`seglab bench` keys (BenchConfig)", metavar="KEY=VALUE")
    out: str = option("", "study folder (default studies/<study file name>)")
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")
    grid: dict = option(
        {}, "more axes: a `seglab train` key -> list of values, e.g. learnrate=[0.01,0.003]", metavar="KEY=VALUES"
    )
    seeds: list[int] = option([0], "training seeds: every cell is trained once per seed", metavar="N", minimum=0)
    last_k: int = option(
        1, "evaluate the K newest step checkpoints of every run (the checkpoint part of the variance)", minimum=1
    )
    probe: dict = option({}, "linear-probe keys (ProbeConfig: steps, tap, learnrate, batch_size, limit)")
    parallel: int = option(
        1, "jobs at once: local worker processes (one GPU each when there are GPUs), or the SLURM array's", minimum=1
    )
    launcher: str = option(
        "local",
        "where jobs run: this machine, submitit's local executor, or SLURM via submitit",
        choices=STUDY_LAUNCHERS,
    )
    partition: str = option("", "SLURM partition (default: the cluster's)")
    time: int = option(240, "time limit of one job in minutes (submitit launchers)", minimum=1)
    gpus_per_job: int = option(1, "GPUs per job (submitit launchers)", minimum=0)
    cpus_per_job: int = option(8, "CPU cores per job (submitit launchers)", minimum=1)
    ddp: bool = option(False, "train each run with DDP on its job's GPUs, through torchrun")
    slurm: dict = option(
        {}, "more SLURM settings as submitit's slurm_* parameters, e.g. account=A qos=Q", metavar="KEY=VALUE"
    )


# Keys of the study's sections that the study sets for each run.
STUDY_SETS = {
    "train": ("basenet", "decoder", "seed", "runs_root", "run_name", "resume"),
    "test": ("run", "out", "checkpoints", "last_k"),
    "bench": ("runs", "basenets", "decoders", "num_classes", "miou_from", "miou_dataset", "csv", "md"),
}


def check_grid(grid: dict, train: dict, source: str) -> dict:
    """Return the study's grid with every value checked as its TrainConfig key; errors name the file and key."""
    checked = {}
    for key, values in grid.items():
        where = f"{source}: grid: {key}"
        if key in STUDY_SETS["train"]:
            hint = "; list them under seeds:" if key == "seed" else ""
            raise ConfigError(f"{where} cannot be a grid axis: the study sets it per run{hint}")
        if key in train:
            raise ConfigError(f"{where} is also set in train: give it in one place")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where} must be a non-empty list of values, got {values!r}")
        items = [check_value(TrainConfig, key, value, where) for value in values]
        if len({repr(v) for v in items}) != len(items):
            raise ConfigError(f"{where} lists a value twice: {values!r}")
        checked[key] = items
    return checked


def check_study(study: StudyConfig, source: str) -> StudyConfig:
    """Return `study` with its sections checked by TrainConfig, TestConfig, BenchConfig and ProbeConfig."""
    for key in ("basenets", "decoders", "seeds"):
        if not getattr(study, key):
            raise ConfigError(f"{source}: {key!r} must be a non-empty list")
    if len(set(study.seeds)) != len(study.seeds):
        raise ConfigError(f"{source}: seeds lists a seed twice: {study.seeds}")
    if "seed" in study.train:
        raise ConfigError(f"{source}: train: seed cannot be set here: the study sets it per run (list them in seeds:)")
    for key, cls in (("train", TrainConfig), ("test", TestConfig), ("bench", BenchConfig)):
        check_section(cls, getattr(study, key), f"{source}: {key}", reserved=STUDY_SETS[key])
    check_section(ProbeConfig, study.probe, f"{source}: probe")
    study.grid = check_grid(study.grid, study.train, source)
    if study.ddp and study.gpus_per_job < 1:
        raise ConfigError(f"{source}: ddp trains on the job's GPUs: set gpus_per_job to 1 or more")
    return study


@dataclass
class ModelsConfig(CheckedConfig):
    """`seglab models`: the registries, and params / GFLOPs per basenet x decoder."""

    size: int = option(512, "square input size for GFLOPs", minimum=1)
    basenets: list[str] = option(list(SEED_BASENETS), "basenets of the table", metavar="NAME")
    decoders: list[str] = option(["fcn8s"], "decoders of the table", metavar="NAME")
    num_classes: int = option(21, "classes of the decoder (21: VOC)", minimum=1)
    list: bool = option(False, "only list the registered basenets, decoders and datasets")
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")


@dataclass
class RunsConfig(CheckedConfig):
    """`seglab runs`: list run folders with their partial-val and full-val mIoU."""

    runs_root: str = option("runs", "folder holding the run folders")
    json: bool = option(False, "print JSON instead of a table")
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")


@dataclass
class CompareConfig(CheckedConfig):
    """`seglab compare`: evaluated runs side by side with a paired bootstrap of each mIoU difference."""

    runs: list[str] = option(
        [],
        "run folders (or eval folders); the first is the baseline",
        positional=True,
        required=True,
        paths=True,
        metavar="RUN",
    )
    eval_name: str = option("val", "evaluation of each run folder to compare: RUN/eval/NAME", aliases=("--eval",))
    out: str = option("", "folder for compare.md, compare.html, compare.json, curves.png (default ./compare-A-vs-B)")
    bootstrap: int = option(DEFAULT_RESAMPLES, "paired bootstrap resamples", metavar="N", minimum=1)
    seed: int = option(0, "seed of the bootstrap", minimum=0, maximum=MAX_SEED)
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.runs) < 2:
            raise ConfigError(f"compare needs at least two runs, got {len(self.runs)}")


@dataclass
class DatasetChoice(CheckedConfig):
    """The dataset a `seglab data` action reads."""

    dataset: str = option("", "dataset name (see `seglab data list`)", required=True)
    data_root: str = option("", "dataset folder (see the README for each dataset's layout)")
    dataset_options: dict = option({}, "dataset options, e.g. length=64 size=64 for synthetic", metavar="KEY=VALUE")
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")


@dataclass
class DataCheckConfig(DatasetChoice):
    """`seglab data check`: read every file of a split and report each fault with its file."""

    split: str = option("train", "split to check")
    quick: bool = option(False, "only lists and file presence (no decoding)")
    strict: bool = option(False, "warnings (e.g. 0/255 binary masks) fail too")
    workers: int | None = option(None, "processes (default: cores, at most 8)", minimum=1)
    json: bool = option(False, "print the findings as JSON")


@dataclass
class DataStatsConfig(DatasetChoice):
    """`seglab data stats`: pixel frequency per class, class weights, object-size histogram."""

    split: str = option("train", "split to count")
    limit: int | None = option(None, "only the first N samples", minimum=1)
    json: bool = option(False, "print the statistics as JSON")


@dataclass
class DataConvertConfig(DatasetChoice):
    """`seglab data convert`: write SBD's .mat labels once as PNGs (voc_aug)."""

    overwrite: bool = option(False, "rewrite PNGs that already exist")
