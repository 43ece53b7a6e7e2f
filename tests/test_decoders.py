"""Every registered decoder x every registered basenet and the tested timm families (ViT, EVA-02, Swin,
MambaOut, PVTv2, ConvNeXt, EfficientNetV2, RegNet) trains on tiny inputs, keeps odd input sizes, and every
decoder exports to ONNX; output stride 8/16; clear errors; the documented FCN+W cost. The tests parametrize
over the registries, so a new decoder or basenet is covered without editing a list."""

from __future__ import annotations

import functools
import re

import pytest
import torch
import torch.nn.functional as F
from deploy_fixtures import photo_crops
from torch import nn

import seglab
import seglab.cli
from seglab.errors import ConfigError
from seglab.export import export_onnx, verify_onnx
from seglab.models import BASENETS, DECODERS, AuxHead, Basenet, SegmentationModel, Tap, build_basenet
from seglab.models.basenets import FAMILIES
from seglab.models.complexity import count_gflops
from seglab.models.pspnet import adaptive_avg_pool2d

NUM_CLASSES = 5
EVERY_DECODER_BASENETS = [*BASENETS.names(), *(f.example for f in FAMILIES if f.every_decoder)]


@functools.cache
def shared_basenet(name: str, output_stride: int = 32) -> Basenet:
    """One frozen basenet per name, shared by the decoder tests (building VGG16's fc6/fc7 takes seconds).

    Frozen so that backward skips the basenet's weight gradients (the basenet tests cover those) yet still
    runs through the basenet to the input.
    """
    torch.manual_seed(0)
    return build_basenet(name, output_stride).requires_grad_(False)


def pair(basenet: str, decoder: str, output_stride: int = 32, **options) -> SegmentationModel:
    net = shared_basenet(basenet, output_stride)
    torch.manual_seed(0)
    return SegmentationModel(net, DECODERS[decoder](net, NUM_CLASSES, **options))


def randomize_zero_parameters(model: nn.Module) -> None:
    """Zero-initialised layers (FCN's score layers) block all gradients before them at step 0 by design; perturb
    them, so that a disconnected parameter is the only way to get no gradient."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.01, generator=torch.Generator().manual_seed(1))


def test_decoder_aliases():
    assert DECODERS.canonical("fcnw") == "fcnw8s"
    assert DECODERS.canonical("deeplabv3+") == "deeplabv3plus"


@pytest.mark.parametrize("decoder", DECODERS.names())
@pytest.mark.parametrize("basenet", EVERY_DECODER_BASENETS)
def test_every_decoder_trains_on_every_basenet(basenet, decoder):
    model = pair(basenet, decoder).train()
    randomize_zero_parameters(model.decoder)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    out = model(x)
    assert out.shape == (2, NUM_CLASSES, 64, 64)
    out.square().mean().backward()
    silent = [n for n, p in model.decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"decoder parameters without gradient: {silent}"
    assert x.grad.abs().sum() > 0  # backward runs through the basenet
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 47)).shape == (1, NUM_CLASSES, 65, 47)


def decoder_class(name: str) -> type:
    """The class a registered decoder factory builds (FCN-32s/16s/8s/4s are one class with other skips)."""
    factory = DECODERS[name]
    return getattr(factory, "func", factory)


# An export costs 25-35 s of CPU time, so the pair grid is not exported in full: every decoder class on a seed
# basenet (its last registered variant: fcn4s and fcnw4s have the most skips), and a ViT and a ConvNeXt (what
# their export can break is in the basenet: interpolated position embeddings, patch padding) with UPerNet,
# the decoder they are usually paired with. Swin is exported at a fixed size only: with dynamic height and
# width, torch.export does not finish on its attention masks within 10 minutes.
EXPORTED = [("mobilenet_v2", name) for name in {decoder_class(n): n for n in DECODERS.names()}.values()] + [
    (family, "upernet") for family in ("vit_tiny_patch16_224", "convnext_atto")
]


@pytest.mark.slow
@pytest.mark.parametrize(("basenet", "decoder"), EXPORTED)
def test_decoders_export_to_onnx_with_dynamic_sizes(basenet, decoder, tmp_path):
    model = pair(basenet, decoder).eval()
    randomize_zero_parameters(model)
    path = export_onnx(model, tmp_path / "model.onnx")
    checks = verify_onnx(model, path, photo_crops(), atol=1e-4)
    assert [c["size"] for c in checks] == [(70, 90), (61, 77)]
    assert all(c["label_agreement"] == 1.0 for c in checks)


@pytest.mark.slow
def test_swin_exports_at_a_fixed_size(tmp_path):
    model = pair("swin_tiny_patch4_window7_224", "upernet").eval()
    photo = photo_crops()[0]
    path = export_onnx(model, tmp_path / "model.onnx", static_shape=(1, *photo.shape[-2:]))
    (check,) = verify_onnx(model, path, [photo], atol=1e-4)
    assert check["size"] == (70, 90) and check["label_agreement"] == 1.0


@pytest.mark.parametrize("decoder", DECODERS.names())
@pytest.mark.parametrize("output_stride", [8, 16])
def test_decoders_run_at_output_stride(decoder, output_stride):
    model = pair("resnet18", decoder, output_stride).eval()
    assert model.basenet.tap(32).stride == output_stride
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 48)).shape == (1, NUM_CLASSES, 64, 48)


@pytest.mark.parametrize(("output_stride", "rates"), [(32, (3, 6, 9)), (16, (6, 12, 18)), (8, (12, 24, 36))])
@pytest.mark.parametrize("decoder", ["deeplabv3", "deeplabv3plus"])
def test_aspp_rates_follow_output_stride(decoder, output_stride, rates):
    model = pair("mobilenet_v2", decoder, output_stride)
    assert model.decoder.rates == rates
    convs = [m for m in model.decoder.aspp.modules() if isinstance(m, nn.Conv2d)]
    atrous = [m.dilation[0] for m in convs if m.kernel_size == (3, 3)]
    assert atrous == list(rates)


def test_aspp_rates_option_overrides_the_default():
    assert pair("resnet18", "deeplabv3", rates=(2, 4)).decoder.rates == (2, 4)
    with pytest.raises(ConfigError, match=r"decoder 'deeplabv3': rates must be positive integers, got \[0, 4\]"):
        pair("resnet18", "deeplabv3", rates=(0, 4))


def test_deeplabv3plus_refine_is_separable_unless_asked():
    def convs(refine: nn.Module) -> list[tuple[int, int, int, int]]:
        return [
            (m.in_channels, m.out_channels, m.kernel_size[0], m.groups)
            for m in refine.modules()
            if isinstance(m, nn.Conv2d)
        ]

    separable = pair("resnet18", "deeplabv3plus").decoder
    assert convs(separable.refine) == [(304, 304, 3, 304), (304, 256, 1, 1), (256, 256, 3, 256), (256, 256, 1, 1)]
    assert convs(separable.reduce) == [(64, 48, 1, 1)]
    dense = pair("resnet18", "deeplabv3plus", separable=False).decoder
    assert convs(dense.refine) == [(304, 256, 3, 1), (256, 256, 3, 1)]


@pytest.mark.parametrize(("output_stride", "strides"), [(32, [2, 2, 2]), (16, [1, 2, 2]), (8, [1, 1, 2])])
def test_linknet_upsamples_only_between_taps_of_different_actual_stride(output_stride, strides):
    decoder = pair("resnet18", "linknet", output_stride).decoder
    blocks = [decoder.blocks[str(level)][1] for level in (16, 8, 4)]
    assert [b.stride[0] for b in blocks] == strides
    x = torch.zeros(1, decoder.taps[32].channels, 3, 3)
    for block in decoder.blocks.values():
        y = block.eval()(x)
        assert y.shape[-2:] == (3 * block[1].stride[0], 3 * block[1].stride[0])
        x = torch.zeros(1, y.shape[1], 3, 3)


class TapsOnly(Basenet):
    """A basenet stub that only declares taps."""

    def __init__(self, reductions: tuple[int, ...]) -> None:
        super().__init__()
        self.name = "stub"
        self.taps = tuple(Tap(f"t{r}", 8, r, r) for r in reductions)


@pytest.mark.parametrize(
    ("decoder", "needed"),
    [
        ("fcnw8s", [8, 16, 32]),
        ("fcnw4s", [4, 8, 16, 32]),
        ("deeplabv3plus", [4, 32]),
        ("linknet", [4, 8, 16, 32]),
        ("lraspp", [8, 32]),
        ("fpn", [4, 8, 16, 32]),
        ("upernet", [4, 8, 16, 32]),
        ("segformer", [4, 8, 16, 32]),
    ],
)
def test_decoders_name_the_taps_a_basenet_lacks(decoder, needed):
    missing = [r for r in needed if r not in (16, 32)]
    message = (
        f"decoder {decoder!r} needs taps at strides {needed}, but basenet 'stub' only has [16, 32] (missing {missing})"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        DECODERS[decoder](TapsOnly((16, 32)), NUM_CLASSES)
    for decoder in ("deeplabv3", "pspnet", "unet"):  # the coarsest tap only (U-Net uses the others it finds)
        DECODERS[decoder](TapsOnly((16, 32)), NUM_CLASSES)


def test_basenets_without_dilation_are_refused_with_the_flag_named():
    with pytest.raises(ConfigError, match=r"basenet 'vgg16' does not support --output-stride 16"):
        seglab.build_model("vgg16", "deeplabv3", NUM_CLASSES, output_stride=16)


def test_fcnw_options():
    plain = pair("mobilenet_v2", "fcnw4s", width=32).decoder
    assert plain.score.in_channels == 32
    assert sorted(plain.project) == ["16", "32", "4", "8"]
    assert plain.project["32"][0].in_channels == 320
    context = pair("mobilenet_v2", "fcnw8s", width=32, global_context=True).decoder
    assert context.project["32"][0].in_channels == 640
    with pytest.raises(ConfigError, match=r"decoder 'fcnw8s': width must be a positive number of channels, got 0"):
        pair("mobilenet_v2", "fcnw8s", width=0)


@pytest.mark.parametrize("global_context", [False, True])
def test_fcnw_global_context_sees_the_whole_map(global_context):
    decoder = pair("resnet18", "fcnw8s", global_context=global_context).decoder.eval()
    deep = torch.rand(1, 512, 8, 8)
    changed = deep.clone()
    changed[..., 5:, 5:] += 1.0  # beyond the 3x3 depthwise conv's reach from the corner
    with torch.no_grad():
        corner = decoder.decode_deepest(deep)[..., 0, 0], decoder.decode_deepest(changed)[..., 0, 0]
    assert torch.allclose(*corner) is not global_context


@pytest.mark.parametrize("width", [64, 128])
def test_fcnw_decoder_gflops_match_the_documented_formula(width):
    """Multiply-adds per pixel: projection c*w, separable refine 9w + w*w, and w*k scoring at the finest level."""
    with torch.device("meta"):
        model = seglab.build_model("resnet18", "fcnw8s", 21, width=width)
    size = 512
    decoder = count_gflops(model, (size, size)) - count_gflops(model.basenet, (size, size))
    macs = 0
    for level, channels in ((32, 512), (16, 256), (8, 128)):
        pixels = (size // level) ** 2
        macs += pixels * (channels * width + 9 * width + width * width)
    macs += (size // 8) ** 2 * width * 21
    assert decoder == pytest.approx(2 * macs / 1e9, rel=1e-9)


def test_models_table_lists_the_decoders(capsys):
    decoders = ",".join(DECODERS.names())
    assert seglab.cli.main(["models", "--basenets", "mobilenet_v2", "--decoders", decoders, "--size", "64"]) == 0
    out = capsys.readouterr().out
    for name in DECODERS.names():
        assert f"| mobilenet_v2 | {name} |" in out


def test_unknown_decoder_options_are_errors_naming_the_accepted_ones():
    with pytest.raises(
        ConfigError,
        match=r"--decoder-options for 'fcn8s': got an unexpected keyword argument "
        r"'widht'; it takes skips, trainable_upsampling",
    ):
        seglab.build_model("resnet18", "fcn8s", 3, widht=64)


@pytest.mark.parametrize("decoder", DECODERS.names())
def test_aux_head_works_with_every_decoder(decoder):
    """The auxiliary FCN head reads the stride-16 tap: training-mode forward returns (logits, aux logits), both
    at the input size, and both heads get gradients; eval mode returns the logits alone."""
    net = shared_basenet("resnet18")
    torch.manual_seed(0)
    model = SegmentationModel(net, DECODERS[decoder](net, NUM_CLASSES), AuxHead(net, NUM_CLASSES)).train()
    assert model.aux_head[0].in_channels == 256 and model.aux_head[-1].out_channels == NUM_CLASSES
    randomize_zero_parameters(model.decoder)
    logits, aux = model(torch.randn(2, 3, 65, 47, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == aux.shape == (2, NUM_CLASSES, 65, 47)
    (logits.square().mean() + aux.square().mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.aux_head.parameters())
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (1, NUM_CLASSES, 64, 64)
    assert model.drop_aux().aux_head is None


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 7), (13, 9), (64, 40)])
def test_adaptive_pooling_equals_pytorchs(size):
    """The integral-image pooling of PSPNet and UPerNet (exportable with dynamic sizes) is PyTorch's
    adaptive average pooling, also for maps smaller than the bins."""
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    for bins in (1, 2, 3, 6):
        torch.testing.assert_close(adaptive_avg_pool2d(x, bins), F.adaptive_avg_pool2d(x, bins), rtol=1e-6, atol=1e-6)


NEW_PAIRS = "resnet34,convnext_atto,vit_tiny_patch16_224"
NEW_DECODERS = "unet,fpn,pspnet,upernet,segformer"


def test_models_and_bench_list_the_new_pairs_with_params_and_gflops(capsys):
    assert seglab.cli.main(["models", "--basenets", NEW_PAIRS, "--decoders", NEW_DECODERS, "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "tested: vit_tiny_patch16_224, deit_tiny_patch16_224" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "GFLOPs" not in line and "---" not in line]
    assert len(rows) == 15 and all(len(row.split("|")) == 6 for row in rows)
    assert "| resnet34 | unet | 24.44 |" in out  # smp's Unet("resnet34", classes=21): 24,439,269 parameters
    argv = ["bench", "--basenets", "resnet34", "--decoders", "unet,segformer", "--size", "32", "--device", "cpu"]
    assert seglab.cli.main([*argv, "--backends", "eager", "--warmup", "0", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"resnet34\s+unet\s+24\.44\s+\d", out) and re.search(r"resnet34\s+segformer\s+21\.80\s+\d", out)
