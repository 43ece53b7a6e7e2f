"""Feature extractors (FEs, "basenets"): ImageNet classification nets cut into taps.

The contract between FE and decoder follows timm's `feature_info`: an FE reports its taps (name, channels,
nominal reduction 4/8/16/32 and the actual stride after dilation) and its forward pass returns a dict
``{reduction: feature map}``. Decoders depend on nothing else, so any FE works with any decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import timm
import torch
import torchvision
from torch import Tensor, nn

from seglab.registry import Registry

REDUCTIONS = (4, 8, 16, 32)
OUTPUT_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class Tap:
    """One feature map an FE exposes: `reduction` is the nominal stride, `stride` the actual one."""

    name: str
    channels: int
    reduction: int
    stride: int


class Backbone(nn.Module):
    """Base class of all FEs: subclasses set `taps`, the normalization and implement `forward`."""

    name: str
    taps: tuple[Tap, ...]
    input_mean: tuple[float, float, float]
    input_std: tuple[float, float, float]
    output_stride: int
    # Own state-dict key prefixes of the ImageNet classifier: ignored (and reported) when loading weights.
    classifier_prefixes: tuple[str, ...] = ()

    def tap(self, reduction: int) -> Tap:
        """Return the tap at nominal `reduction`, or raise naming the reductions this FE has."""
        for tap in self.taps:
            if tap.reduction == reduction:
                return tap
        raise ValueError(
            f"basenet {self.name!r} has no tap at stride {reduction}; "
            f"it has taps at strides {[t.reduction for t in self.taps]}"
        )

    def require(self, reductions: Iterable[int], who: str) -> None:
        """Raise a clear error when this FE cannot supply every tap `who` (a decoder) needs."""
        missing = sorted(set(reductions) - {t.reduction for t in self.taps})
        if missing:
            raise ValueError(
                f"decoder {who!r} needs taps at strides {sorted(set(reductions))}, but basenet {self.name!r} "
                f"only has {[t.reduction for t in self.taps]} (missing {missing})"
            )

    def convert_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Map a classification checkpoint of this FE's family onto this module's keys (identity by default)."""
        return state_dict


def _nominal_reductions(actual: Sequence[int]) -> list[int]:
    """Undo dilation in a list of per-tap strides: a stride that stops growing still doubles nominally."""
    nominal: list[int] = []
    for i, stride in enumerate(actual):
        nominal.append(stride if i == 0 or stride > actual[i - 1] else nominal[-1] * 2)
    return nominal


class TimmBackbone(Backbone):
    """Any timm model that supports `features_only`; dilation through timm's `output_stride`."""

    def __init__(self, model_name: str, output_stride: int = 32, name: str | None = None) -> None:
        super().__init__()
        self.name = name or model_name
        kwargs = {} if output_stride == 32 else {"output_stride": output_stride}
        try:
            self.body = timm.create_model(model_name, pretrained=False, features_only=True, **kwargs)
        except (AssertionError, TypeError, ValueError, NotImplementedError) as err:
            if output_stride == 32:
                raise
            raise ValueError(
                f"basenet {self.name!r} (timm {model_name!r}) cannot run at output stride {output_stride}: "
                f"timm does not support dilation for it ({err or type(err).__name__}); use --output-stride 32"
            ) from err
        info = self.body.feature_info
        actual = info.reduction()
        nominal = _nominal_reductions(actual) if output_stride != 32 else list(actual)
        if output_stride != 32 and min(actual[-1], 32) != output_stride:
            raise ValueError(
                f"basenet {self.name!r} (timm {model_name!r}) ignored output stride {output_stride} "
                f"(its deepest tap is at stride {actual[-1]}); use --output-stride 32"
            )
        # The deepest feature at each stride (a ViT gives several at stride 16).
        last_at = {r: i for i, r in enumerate(nominal) if r in REDUCTIONS}
        keep = sorted(last_at.values())
        self.tap_indices = keep
        self.taps = tuple(Tap(info.module_name(i), info.channels()[i], nominal[i], actual[i]) for i in keep)
        cfg = self.body.pretrained_cfg
        self.input_mean = tuple(float(v) for v in cfg["mean"])
        self.input_std = tuple(float(v) for v in cfg["std"])
        self.output_stride = output_stride
        self.timm_name = model_name

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        features = self.body(x)
        return {tap.reduction: features[i] for tap, i in zip(self.taps, self.tap_indices, strict=True)}


class StagedBackbone(Backbone):
    """A torchvision classification net run stage by stage; module names keep torchvision's keys.

    `stages` lists, per tap, the attribute paths of `net` to run in order to reach that tap.
    Modules of `net` not named in any stage (the classifier) are removed.
    """

    def __init__(
        self,
        name: str,
        net: nn.Module,
        stages: Sequence[tuple[Tap, Sequence[str]]],
        mean: Sequence[float],
        std: Sequence[float],
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
        self.input_mean = tuple(float(v) for v in mean)
        self.input_std = tuple(float(v) for v in std)
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


BackboneFactory = Callable[[int], Backbone]
BACKBONES: Registry[BackboneFactory] = Registry("basenet")


def _no_dilation(name: str, output_stride: int) -> None:
    if output_stride != 32:
        raise ValueError(
            f"basenet {name!r} does not support --output-stride {output_stride}: its pooling layers cannot be "
            "replaced by dilation here; use --output-stride 32 or a ResNet / MobileNet / EfficientNet basenet"
        )


def _check_output_stride(output_stride: int) -> None:
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"--output-stride must be one of {OUTPUT_STRIDES}, got {output_stride}")


def _torchvision_norm(weights: torchvision.models.WeightsEnum) -> tuple[list[float], list[float]]:
    transform = weights.transforms()
    return list(transform.mean), list(transform.std)


class VGG16FCN(Backbone):
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
        mean, std = _torchvision_norm(torchvision.models.VGG16_Weights.IMAGENET1K_V1)
        self.input_mean, self.input_std = tuple(mean), tuple(std)
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


@BACKBONES.register("vgg16", aliases=("vgg_16",))
def vgg16(output_stride: int = 32) -> Backbone:
    """VGG16 (Simonyan & Zisserman 2015) with FCN's convolutional fc6/fc7."""
    _no_dilation("vgg16", output_stride)
    return VGG16FCN()


@BACKBONES.register("inception_v1", aliases=("googlenet",))
def inception_v1(output_stride: int = 32) -> Backbone:
    """Inception V1 / GoogLeNet (Szegedy et al. 2015), torchvision's port.

    torchvision's ImageNet weights were ported from TensorFlow and expect inputs scaled to [-1, 1]
    (its `transform_input` converts ImageNet-normalized inputs to that); seglab feeds them directly with
    mean = std = 0.5 and `transform_input` off.
    """
    _no_dilation("inception_v1", output_stride)
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
    return StagedBackbone("inception_v1", net, stages, (0.5,) * 3, (0.5,) * 3, 32, ("fc.",))


def torchvision_resnet(arch: str, output_stride: int = 32) -> Backbone:
    """A torchvision bottleneck ResNet; output stride 16/8 dilates layer4 (and layer3) as torchvision's DeepLabV3.

    torchvision's BasicBlock cannot dilate, so ResNet18 comes from timm (same state-dict keys).
    """
    _check_output_stride(output_stride)
    dilation = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]
    net = getattr(torchvision.models, arch)(weights=None, replace_stride_with_dilation=dilation)
    channels = [c * net.layer1[0].expansion for c in (64, 128, 256, 512)]
    strides = [4, 8, min(16, output_stride), min(32, output_stride)]
    paths = [["conv1", "bn1", "relu", "maxpool", "layer1"], ["layer2"], ["layer3"], ["layer4"]]
    stages = [
        (Tap(f"layer{i + 1}", ch, 4 * 2**i, s), p)
        for i, (ch, s, p) in enumerate(zip(channels, strides, paths, strict=True))
    ]
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    mean, std = _torchvision_norm(weights)
    return StagedBackbone(arch, net, stages, mean, std, output_stride, ("fc.",))


@BACKBONES.register("resnet50", aliases=("resnet_v1_50",))
def resnet50(output_stride: int = 32) -> Backbone:
    """ResNet50 (He et al. 2016), torchvision's layout (the basenet of torchvision's DeepLabV3)."""
    return torchvision_resnet("resnet50", output_stride)


@BACKBONES.register("mobilenet_v3_large")
def mobilenet_v3_large(output_stride: int = 32) -> Backbone:
    """MobileNetV3-Large (Howard et al. 2019), torchvision's layout; output stride 16 dilates the last stage."""
    if output_stride not in (16, 32):
        raise ValueError(f"basenet 'mobilenet_v3_large' supports --output-stride 32 or 16, not {output_stride}")
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
    mean, std = _torchvision_norm(torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1)
    return StagedBackbone("mobilenet_v3_large", net, stages, mean, std, output_stride, ("classifier.",))


def _timm(name: str, timm_name: str, doc: str, aliases: tuple[str, ...] = ()) -> None:
    def factory(output_stride: int = 32) -> Backbone:
        _check_output_stride(output_stride)
        return TimmBackbone(timm_name, output_stride, name=name)

    factory.__doc__ = doc
    factory.__name__ = name
    BACKBONES.register(name, aliases=aliases)(factory)


_timm(
    "resnet18",
    "resnet18",
    "ResNet18 (He et al. 2016), timm's implementation (torchvision's key names, dilation supported).",
    aliases=("resnet_v1_18",),
)
_timm("mobilenet_v1", "mobilenetv1_100", "MobileNet V1 1.0 (Howard et al. 2017), timm's implementation.")
_timm("mobilenet_v2", "mobilenetv2_100", "MobileNet V2 1.0 (Sandler et al. 2018), timm's implementation.")
for _i in range(3):
    _timm(
        f"efficientnet_lite{_i}",
        f"tf_efficientnet_lite{_i}",
        f"EfficientNet-Lite{_i} (Tan & Le 2019, Lite variant), timm's TF-compatible implementation.",
    )

SEED_BASENETS = ("vgg16", "inception_v1", "resnet18", "mobilenet_v1", "mobilenet_v2")


def build_backbone(name: str, output_stride: int = 32) -> Backbone:
    """Build a registered FE, or any timm model that supports `features_only` (optionally `timm:NAME`)."""
    _check_output_stride(output_stride)
    if name in BACKBONES:
        return BACKBONES[name](output_stride)
    timm_name = name.removeprefix("timm:")
    if timm.is_model(timm_name):
        return TimmBackbone(timm_name, output_stride)
    raise ValueError(
        f"unknown basenet {name!r}: choose one of {', '.join(BACKBONES.names())} "
        "or a timm model name (see `timm.list_models()`)"
    )
