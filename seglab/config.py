"""Typed configurations of every command: one dataclass field <-> one flag <-> one YAML key.

`TrainConfig` is `seglab train` (written to each run folder as runargs.yaml, which `--config` reads back
unchanged, so a run is re-runnable), `TestConfig` is `seglab test`, and so on for every subcommand. The
command layer (`seglab.cli.flags`) turns each field into a flag from the field's type and metadata;
precedence is defaults < `--config FILE` < flags on the command line. `seglab study` validates its YAML
sections `train`, `test` and `bench` with these same classes, so every key everywhere is checked the same
way: an unknown key or a wrongly typed value is a `ConfigError` naming the file (or flag) and the key.

Field types are str, int, float, bool, `list[T]`, dict and `T | None`; metadata holds the help text,
choices, a metavar, a minimum, whether the field is positional, and old flag spellings kept as aliases.
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
BENCH_BACKENDS = ("eager", "channels_last", "compile", "onnxruntime")
ONNX_OPSET = 18
"""The ONNX opset `seglab export` writes (the torch.export-based exporter needs 18 or newer)."""
EXPORT_ATOL = 1e-3
"""The largest |ONNX Runtime - PyTorch| logit difference an export may show on its verification images."""
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
    positional: bool = False,
    required: bool = False,
    paths: bool = False,
    aliases: tuple[str, ...] = (),
) -> Any:
    """Return a dataclass field carrying its flag's metadata; list and dict defaults are copied per instance.

    `minimum` (inclusive) and `above` (exclusive) bound numbers (each item of a list); `required` marks a
    value the command cannot do without; `paths` marks a list of paths (never split at commas on the
    command line); `aliases` are old flag spellings, accepted but hidden from --help.
    """
    meta = {
        "help": help,
        "choices": choices,
        "metavar": metavar,
        "minimum": minimum,
        "above": above,
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


def _check_bounds(name: str, value: Any, meta: dict, source: str) -> None:
    minimum, above = meta.get("minimum"), meta.get("above")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if minimum is not None and value < minimum:
            raise ConfigError(f"{source}: {name} must be at least {minimum:g}, got {value!r}")
        if above is not None and value <= above:
            raise ConfigError(f"{source}: {name} must be greater than {above:g}, got {value!r}")


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
class TrainConfig:
    """Everything that defines a training run. Defaults are a PASCAL VOC recipe for one GPU."""

    # model
    basenet: str = option("efficientnet_lite0", "basenet: the feature extractor (see `seglab models`)")
    decoder: str = option("fcn8s", "decoder (see `seglab models`)")
    output_stride: int = option(32, "output stride of the basenet (dilation below 32)", choices=(8, 16, 32))
    pretrained: str = option(
        "imagenet", "basenet weights: imagenet | package | timm:NAME | torchvision:WEIGHTS | FILE | none"
    )
    decoder_options: dict = option({}, "decoder options, e.g. trainable_upsampling=true", metavar="KEY=VALUE")
    num_classes: int = option(0, "number of classes; 0 takes it from the dataset (a mismatch is an error)")
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")
    # data
    dataset: str = option("", "dataset name; default: voc with --data-root, the embedded synthetic set without")
    data_root: str = option("", "dataset folder")
    dataset_options: dict = option({}, "dataset options, e.g. length=64 size=64 for synthetic", metavar="KEY=VALUE")
    train_split: str = option("train", "split to train on")
    val_split: str = option("val", "split to validate on")
    crop: list[int] = option([], "training crop: SIZE or HEIGHT WIDTH; default: the dataset's preset", metavar="PX")
    scale_range: list[float] = option([0.5, 2.0], "random rescale range before cropping", metavar="S")
    flip: bool = option(True, "random horizontal flips")
    jitter: float = option(0.0, "colour jitter strength (0: off)")
    pad_mean: bool = option(
        True, "pad crops with the basenet's mean colour (0 after normalization); --no-pad-mean: black"
    )
    workers: int = option(4, "DataLoader worker processes per rank")
    skip_bad_samples: bool = option(False, "skip (and count) unreadable samples instead of stopping")
    # optimization
    optimizer: str = option("sgd", "sgd (with momentum) or adamw", choices=("sgd", "adamw"))
    learnrate: float = option(0.01, "peak learning rate")
    momentum: float = option(0.9, "SGD momentum (adamw: beta1)")
    weight_decay: float = option(1e-4, "weight decay")
    batch_size: int = option(16, "global batch size (split across DDP ranks)")
    epochs: int = option(30, "epochs to train (ignored when --iters > 0)")
    iters: int = option(0, "iterations to train; 0 uses --epochs")
    decaylr: str = option("poly", "learning-rate decay", choices=("poly", "cosine", "step", "none"))
    warmup: int = option(0, "linear warm-up iterations")
    loss: str = option(
        "ce",
        f"loss: one of {', '.join(LOSS_TERMS)}, or a weighted sum such as ce+dice or 0.7*ce+0.3*lovasz",
        metavar="SPEC",
    )
    class_weights: list[float] = option([], "per-class loss weights (one per class)", metavar="W")
    ohem_thresh: float = option(0.7, "OHEM: keep pixels whose true-class probability is below this")
    ohem_min_kept: int = option(100000, "OHEM: keep at least this many pixels per batch")
    focal_gamma: float = option(2.0, "focal loss: the focusing exponent gamma (0: sigmoid cross-entropy)", minimum=0)
    aux_weight: float = option(
        0.0, "weight of the auxiliary FCN head's loss on the stride-16 tap (0: no auxiliary head)", minimum=0
    )
    freeze_bn: bool = option(False, "keep BatchNorm statistics frozen (eval mode) while training")
    sync_bn: bool = option(True, "synchronize BatchNorm statistics across GPUs under DDP")
    seed: int = option(0, "seed of weights init, data order and augmentation")
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
    log_every: int = option(20, "log loss, lr and throughput every N steps")
    eval_every: int = option(500, "mIoU on a random part of val every N steps (0: only at the end)")
    eval_fraction: float = option(0.25, "part of val drawn for each partial evaluation")
    eval_batch_size: int = option(1, "validation batch size per rank")
    ckpt_every: int = option(100, "write checkpoints/last.pt every N steps")
    keep: int = option(3000, "also keep a checkpoint every N steps (0: none)")
    resume: str = option("", "continue the run in this folder from its last checkpoint")

    def __post_init__(self) -> None:
        if len(self.crop) == 1:  # one size means a square crop
            self.crop = self.crop * 2
        if len(self.crop) not in (0, 2):
            raise ConfigError(f"--crop takes SIZE or HEIGHT WIDTH, got {self.crop}")
        if len(self.scale_range) != 2:
            raise ConfigError(f"--scale-range takes MIN MAX, got {self.scale_range}")
        parse_loss(self.loss)


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
    }
)


@dataclass
class InferenceOptions:
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
        "", "run folder (uses checkpoints/last.pt) or a checkpoint file", positional=True, required=True, metavar="RUN"
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
    seed: int = option(0, "seed of the bootstrap")
    gallery: int = option(8, "worst images shown in the report", metavar="K", minimum=0)
    size_bins: list[int] = option(
        list(COCO_AREA_BINS), "object area edges in pixels: small/medium and medium/large", metavar="PX", minimum=1
    )
    boundary_ratio: float = option(
        DEFAULT_DILATION_RATIO, "Boundary IoU band width as a share of the image diagonal", above=0
    )
    dataset: str = option("", "dataset name (default: the run's)")
    data_root: str = option("", "dataset root (default: the run's)")
    device: str = option("auto", DEVICE_HELP)
    limit: int | None = option(None, "evaluate only the first N images", metavar="N", minimum=1)
    workers: int = option(2, "data-loading processes", minimum=0)
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.checkpoints and self.last_k is not None:
            raise ConfigError("--checkpoints and --last-k choose checkpoints in two ways: give one of them")
        if len(self.size_bins) != 2 or self.size_bins[0] >= self.size_bins[1]:
            raise ConfigError(f"--size-bins takes two increasing areas SMALL,MEDIUM, got {self.size_bins}")


@dataclass
class PredictConfig(InferenceOptions):
    """`seglab predict`: segment image files with a run; label PNGs, overlays and probabilities."""

    run: str = option(
        "", "run folder (uses checkpoints/last.pt) or a checkpoint file", positional=True, required=True, metavar="RUN"
    )
    images: list[str] = option(
        [],
        "image files, folders and glob patterns (quote them)",
        positional=True,
        required=True,
        paths=True,
        metavar="IMAGE",
    )
    out: str = option("", "output folder", required=True)
    save_probs: str | None = option(
        None, "also write float16 class probabilities [K, H, W] in this format", choices=("npy", "safetensors")
    )
    device: str = option("auto", DEVICE_HELP)
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")


@dataclass
class ExportConfig:
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
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")


@dataclass
class BenchConfig:
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
    threads: int = option(0, "CPU threads for PyTorch and ONNX Runtime (0: torch.get_num_threads())", minimum=0)
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
        if len(self.size) == 1:
            self.size = self.size * 2
        if len(self.size) != 2:
            raise ConfigError(f"--size takes S or H W, got {len(self.size)} numbers")
        if "compile" in self.backends and self.warmup < 1:
            raise ConfigError("--backends compile needs --warmup 1 or more, so that compiling is not timed")


@dataclass
class StudyConfig:
    """`seglab study`: a basenet x decoder grid, trained, evaluated and measured from one YAML file."""

    basenets: list[str] = option([], "basenets of the grid", metavar="NAME")
    decoders: list[str] = option([], "decoders of the grid", metavar="NAME")
    train: dict = option({}, "`seglab train` keys shared by every run (TrainConfig)", metavar="KEY=VALUE")
    test: dict = option({}, "`seglab test` keys (TestConfig)", metavar="KEY=VALUE")
    bench: dict = option({}, "`seglab bench` keys (BenchConfig)", metavar="KEY=VALUE")
    out: str = option("", "study folder (default studies/<study file name>)")
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")


# Keys of the study's sections that the study sets for each run.
STUDY_SETS = {
    "train": ("basenet", "decoder", "runs_root", "run_name", "resume"),
    "test": ("run", "out", "checkpoints", "last_k"),
    "bench": ("runs", "basenets", "decoders", "num_classes", "miou_from", "miou_dataset", "csv", "md"),
}


def check_study(study: StudyConfig, source: str) -> StudyConfig:
    """Return `study` with its train/test/bench sections checked by TrainConfig, TestConfig and BenchConfig."""
    for key in ("basenets", "decoders"):
        if not getattr(study, key):
            raise ConfigError(f"{source}: {key!r} must be a non-empty list of names")
    for key, cls in (("train", TrainConfig), ("test", TestConfig), ("bench", BenchConfig)):
        check_section(cls, getattr(study, key), f"{source}: {key}", reserved=STUDY_SETS[key])
    return study


@dataclass
class ModelsConfig:
    """`seglab models`: the registries, and params / GFLOPs per basenet x decoder."""

    size: int = option(512, "square input size for GFLOPs", minimum=1)
    basenets: list[str] = option(list(SEED_BASENETS), "basenets of the table", metavar="NAME")
    decoders: list[str] = option(["fcn8s"], "decoders of the table", metavar="NAME")
    num_classes: int = option(21, "classes of the decoder (21: VOC)", minimum=1)
    list: bool = option(False, "only list the registered basenets, decoders and datasets")
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")


@dataclass
class RunsConfig:
    """`seglab runs`: list run folders with their partial-val and full-val mIoU."""

    runs_root: str = option("runs", "folder holding the run folders")
    json: bool = option(False, "print JSON instead of a table")
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")


@dataclass
class CompareConfig:
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
    seed: int = option(0, "seed of the bootstrap")
    plugins: list[str] = option([], PLUGINS_HELP, metavar="MODULE")

    def __post_init__(self) -> None:
        if len(self.runs) < 2:
            raise ConfigError(f"compare needs at least two runs, got {len(self.runs)}")


@dataclass
class DatasetChoice:
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
