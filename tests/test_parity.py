"""Parity with reference implementations: torchvision's DeepLabV3-ResNet50 and LR-ASPP-MobileNetV3-Large
(same parameters; same outputs with weights copied across); smp's Unet, FPN, PSPNet, UPerNet and Segformer
on resnet34 and on timm's convnext_atto (same parameters, same outputs to 1e-5 with weights copied across,
each deliberate difference asserted); smp's Linknet('resnet18') (the parameter count, with every difference
itemized as in the README)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import seglab
from seglab.models import SegmentationModel
from seglab.models.basenets import StagedBasenet, Tap
from seglab.models.complexity import count_params
from seglab.models.lraspp import LRASPP

NUM_CLASSES = 21


def randomize_batchnorm_statistics(model: nn.Module, seed: int = 0) -> None:
    """Give every BN layer non-trivial running statistics, so copied buffers matter in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


def copy_weights(reference: nn.Module, model: nn.Module, prefixes: dict[str, str]) -> None:
    """Load `reference`'s state dict into `model`, renaming key prefixes; strict, so every key must match."""
    state = {}
    for key, value in reference.state_dict().items():
        renamed = [new + key.removeprefix(old) for old, new in prefixes.items() if key.startswith(old)]
        assert len(renamed) == 1, f"no single prefix rule for {key}"
        state[renamed[0]] = value
    model.load_state_dict(state, strict=True)


def assert_same_outputs(reference: nn.Module, model: nn.Module, size: tuple[int, int]) -> None:
    reference.eval()
    model.eval()
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x)["out"]
        actual = model(x)
    assert actual.shape == expected.shape == (1, NUM_CLASSES, *size)
    assert expected.abs().max() > 1e-2  # a non-degenerate output, so the comparison means something
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_deeplabv3_resnet50_matches_torchvision():
    torch.manual_seed(0)
    reference = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, aux_loss=False, num_classes=NUM_CLASSES
    )
    model = seglab.build_model("resnet50", "deeplabv3", NUM_CLASSES, output_stride=8)
    assert model.decoder.rates == (12, 24, 36)
    assert count_params(model) == count_params(reference) == 39_638_869
    randomize_batchnorm_statistics(reference)
    copy_weights(
        reference,
        model,
        {
            "backbone.": "basenet.net.",
            "classifier.0.": "decoder.aspp.",
            "classifier.1.": "decoder.refine.0.",
            "classifier.2.": "decoder.refine.1.",
            "classifier.4.": "decoder.score.",
        },
    )
    assert_same_outputs(reference, model, (64, 64))


def torchvision_lraspp_basenet() -> StagedBasenet:
    """MobileNetV3-Large at output stride 16 with torchvision LR-ASPP's stride-8 tap: `features.4`.

    torchvision's LR-ASPP takes its low-level features after the *first* block at stride 8 (features[4]);
    seglab's registered basenet taps the *last* one (features[6], end of the stage, as timm does). Both have
    40 channels, so parameter counts agree; for equal outputs this basenet taps where torchvision does.
    """
    net = torchvision.models.mobilenet_v3_large(weights=None, dilated=True)
    ends = {4: 3, 8: 4, 16: 12, 32: 16}
    channels = {4: 24, 8: 40, 16: 112, 32: 960}
    stages, start = [], 0
    for reduction, end in ends.items():
        tap = Tap(f"features.{end}", channels[reduction], reduction, min(reduction, 16))
        stages.append((tap, [f"features.{i}" for i in range(start, end + 1)]))
        start = end + 1
    basenet = StagedBasenet("mobilenet_v3_large", net, stages, 16, ("classifier.",))
    basenet.input_mean, basenet.input_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return basenet


def torchvision_lraspp() -> nn.Module:
    return torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES
    )


def test_lraspp_mobilenet_v3_large_has_torchvision_parameter_count():
    model = seglab.build_model("mobilenet_v3_large", "lraspp", NUM_CLASSES, output_stride=16)
    # torchvision's weights metadata gives the same figure for its 21-class model.
    assert count_params(model) == count_params(torchvision_lraspp()) == 3_221_538


def test_lraspp_mobilenet_v3_large_matches_torchvision_outputs():
    torch.manual_seed(0)
    reference = torchvision_lraspp()
    basenet = torchvision_lraspp_basenet()
    model = SegmentationModel(basenet, LRASPP(basenet, NUM_CLASSES))
    randomize_batchnorm_statistics(reference)
    copy_weights(reference, model, {"backbone.": "basenet.net.features.", "classifier.": "decoder."})
    assert_same_outputs(reference, model, (64, 64))


def conv(c_in: int, c_out: int, k: int, bias: bool) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def test_linknet_resnet18_parameter_count_against_smp_itemized():
    smp = pytest.importorskip("segmentation_models_pytorch")
    reference = smp.Linknet("resnet18", encoder_weights=None, classes=NUM_CLASSES)
    model = seglab.build_model("resnet18", "linknet", NUM_CLASSES)
    assert count_params(model.basenet) == count_params(reference.encoder) == 11_176_512

    def block(m: int, n: int, kernel: int, bias: bool) -> int:  # 1x1, kernel x kernel transposed conv, 1x1; + BN
        return (
            conv(m, m // 4, 1, False)
            + bn(m // 4)
            + conv(m // 4, m // 4, kernel, bias)
            + bn(m // 4)
            + conv(m // 4, n, 1, False)
            + bn(n)
        )

    def smp_block(m: int, n: int) -> int:  # smp: a 4x4 transposed conv with bias
        return block(m, n, 4, True)

    def seglab_block(m: int, n: int) -> int:  # the paper: 3x3, no bias (BN follows)
        return block(m, n, 3, False)

    smp_blocks = [count_params(b) for b in reference.decoder.blocks]
    assert smp_blocks == [smp_block(m, n) for m, n in [(512, 256), (256, 128), (128, 64), (64, 64), (64, 32)]]
    ours = [count_params(model.decoder.blocks[str(level)]) for level in (16, 8, 4)]
    assert ours == [seglab_block(m, n) for m, n in [(512, 256), (256, 128), (128, 64)]]
    assert count_params(model.decoder.block1) == seglab_block(64, 64)
    # The paper's final block: 3x3 full conv x2 (64 -> 32), 3x3 conv (32), 2x2 full conv x2 (32 -> classes).
    final = conv(64, 32, 3, False) + bn(32) + conv(32, 32, 3, False) + bn(32) + conv(32, NUM_CLASSES, 2, True)
    assert count_params(model.decoder.final) == final
    smp_head = conv(32, NUM_CLASSES, 1, True)
    assert count_params(reference.segmentation_head) == smp_head
    difference = sum(smp_blocks) + smp_head - sum(ours) - seglab_block(64, 64) - final
    assert count_params(reference) - count_params(model) == difference == 128_544


# --- segmentation_models_pytorch: Unet, FPN, PSPNet, UPerNet, Segformer on resnet34 and a timm encoder ---

SMP_ENCODERS = {"resnet34": ("resnet34", "encoder."), "convnext_atto": ("tu-convnext_atto", "encoder.model.")}


def smp_module():
    return pytest.importorskip("segmentation_models_pytorch")


def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Random BN statistics and random affine parameters of every BN, GroupNorm and LayerNorm, so that the
    copied values matter."""
    randomize_batchnorm_statistics(model, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and module.weight is not None:
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=generator))


def copy_renamed(
    reference: nn.Module,
    model: nn.Module,
    rules: list[tuple[str, str]],
    inner: tuple[tuple[str, str], ...] = (),
    unused: tuple[str, ...] = (),
) -> None:
    """Load `reference`'s state dict into `model`: each key renamed by the first matching (old, new) prefix rule,
    then by the `inner` substring replacements, each tensor reshaped to the target's shape (smp's Linear layers
    are seglab's 1x1 convs); keys starting with an `unused` prefix are left out; strict."""
    own = model.state_dict()
    state = {}
    for key, value in reference.state_dict().items():
        if key.startswith(unused):
            continue
        renamed = next((new + key.removeprefix(old) for old, new in rules if key.startswith(old)), key)
        for old, new in inner:
            renamed = renamed.replace(old, new)
        assert renamed in own, f"{key} -> {renamed}: no such key in seglab's model"
        assert value.numel() == own[renamed].numel(), key
        state[renamed] = value.reshape(own[renamed].shape)
    model.load_state_dict(state, strict=True)


def smp_pair(architecture: str, encoder: str, decoder: str, **options) -> tuple[nn.Module, nn.Module]:
    """(smp model, seglab model) with the same encoder, `NUM_CLASSES` classes, both with random weights."""
    smp_name, _ = SMP_ENCODERS[encoder]
    smp_options = options.pop("smp", {})
    torch.manual_seed(0)
    reference = getattr(smp_module(), architecture)(smp_name, encoder_weights=None, classes=NUM_CLASSES, **smp_options)
    model = seglab.build_model(encoder, decoder, NUM_CLASSES, **options)
    randomize_norms(reference)
    return reference, model


def assert_smp_outputs_equal(reference: nn.Module, model: nn.Module, size: tuple[int, int] = (64, 96)) -> None:
    """Same logits to 1e-5, computed in float64: untrained encoders in eval mode reach activations of ~1e3,
    where float32 rounding alone differs by more than 1e-5 between two orders of the same sums."""
    reference.double().eval()
    model.double().eval()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        expected = reference(x)
        actual = model(x)
    assert actual.shape == expected.shape == (2, NUM_CLASSES, *size)
    assert expected.std() > 1e-2  # a non-degenerate output, so the comparison means something
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def unet_rules(encoder: str) -> list[tuple[str, str]]:
    levels = (16, 8, 4, 2, 1)
    return [
        (SMP_ENCODERS[encoder][1], "basenet.body."),
        *((f"decoder.blocks.{i}.", f"decoder.blocks.{level}.") for i, level in enumerate(levels)),
        ("segmentation_head.0.", "decoder.score."),
    ]


def fpn_rules(encoder: str) -> list[tuple[str, str]]:
    return [
        (SMP_ENCODERS[encoder][1], "basenet.body."),
        ("decoder.p5.", "decoder.lateral.32."),
        *((f"decoder.p{p}.skip_conv.", f"decoder.lateral.{level}.") for p, level in ((4, 16), (3, 8), (2, 4))),
        *((f"decoder.seg_blocks.{i}.block.", f"decoder.stages.{level}.") for i, level in enumerate((32, 16, 8, 4))),
        ("segmentation_head.0.", "decoder.score."),
    ]


def pspnet_rules(encoder: str) -> list[tuple[str, str]]:
    return [
        (SMP_ENCODERS[encoder][1], "basenet.body."),
        *((f"decoder.psp.blocks.{i}.pool.1.", f"decoder.branches.{i}.project.") for i in range(4)),
        ("decoder.conv.", "decoder.bottleneck."),
        ("segmentation_head.0.", "decoder.score."),
    ]


def upernet_rules(encoder: str) -> list[tuple[str, str]]:
    return [
        (SMP_ENCODERS[encoder][1], "basenet.body."),
        *((f"decoder.feature_norms.{i}.", f"decoder.norms.{level}.") for i, level in enumerate((4, 8, 16, 32))),
        *((f"decoder.psp.blocks.{i}.1.", f"decoder.branches.{i}.project.") for i in range(4)),
        ("decoder.psp.out_conv.", "decoder.ppm_out."),
        *(
            (f"decoder.fpn_lateral_blocks.{i}.conv_norm_relu.", f"decoder.lateral.{s}.")
            for i, s in enumerate((16, 8, 4))
        ),
        *((f"decoder.fpn_conv_blocks.{i}.", f"decoder.smooth.{s}.") for i, s in enumerate((16, 8, 4))),
        ("decoder.fusion_block.", "decoder.fusion."),
        ("segmentation_head.0.", "decoder.score."),
    ]


def segformer_rules(encoder: str, levels: tuple[int, ...]) -> list[tuple[str, str]]:
    return [
        (SMP_ENCODERS[encoder][1], "basenet.body."),
        *((f"decoder.mlp_stage.{i}.linear.", f"decoder.project.{level}.") for i, level in enumerate(levels)),
        ("decoder.fuse_stage.", "decoder.fusion."),
        ("segmentation_head.0.", "decoder.score."),
    ]


# smp's PSPNet cuts its encoder at stride 8 by default (encoder_depth=3, upsampling=8); seglab decodes the
# deepest tap like the paper, which is smp's encoder_depth=5 (upsampling=32). smp's Segformer feeds a
# stride-2 feature of CNN encoders too; seglab's default is the paper's four levels, `skips=(16, 8, 4, 2)`
# is smp's. Each difference is asserted below.
SMP_CASES = {
    "unet": ("Unet", {}, unet_rules),
    "fpn": ("FPN", {}, fpn_rules),
    "pspnet": ("PSPNet", {"smp": {"encoder_depth": 5, "upsampling": 32}}, pspnet_rules),
    "upernet": ("UPerNet", {}, upernet_rules),
    "segformer": ("Segformer", {}, lambda encoder: segformer_rules(encoder, (32, 16, 8, 4))),
}


@pytest.mark.parametrize("encoder", sorted(SMP_ENCODERS))
@pytest.mark.parametrize("decoder", sorted(SMP_CASES))
def test_smp_decoders_have_the_same_parameters_and_outputs(decoder, encoder):
    architecture, options, rules = SMP_CASES[decoder]
    options = {k: dict(v) if isinstance(v, dict) else v for k, v in options.items()}
    names = rules(encoder)
    if decoder == "segformer" and encoder == "resnet34":  # smp's five levels on a CNN encoder
        options["skips"] = (16, 8, 4, 2)
        names = segformer_rules(encoder, (32, 16, 8, 4, 2))
    reference, model = smp_pair(architecture, encoder, decoder, **options)
    assert count_params(model) == count_params(reference)
    copy_renamed(reference, model, names)
    assert_smp_outputs_equal(reference, model)


def test_smp_pspnet_default_decodes_the_stride_8_feature_seglab_the_deepest():
    smp = smp_module()
    default = smp.PSPNet("resnet34", encoder_weights=None, classes=NUM_CLASSES)
    assert default.encoder.output_stride == 8
    assert default.decoder.psp.blocks[1].pool[1][0].in_channels == 128  # resnet34's layer2
    ours = seglab.build_model("resnet34", "pspnet", NUM_CLASSES)
    assert ours.decoder.branches[1].project[0].in_channels == 512  # resnet34's layer4, as smp's encoder_depth=5


def test_smp_segformer_on_resnet34_adds_the_stride_2_level_seglab_does_not():
    reference, _ = smp_pair("Segformer", "resnet34", "segformer")
    ours = seglab.build_model("resnet34", "segformer", NUM_CLASSES)
    assert sorted(ours.decoder.taps) == [4, 8, 16, 32]
    projection = 64 * 256 + 256  # the stride-2 tap's (64 channels) linear layer
    fusion = 256 * 256  # the fusion conv's input widens by 256 channels
    assert count_params(reference) - count_params(ours) == projection + fusion == 82_176


def scse_parameters(channels: int) -> int:
    hidden = channels // 16
    return conv(channels, hidden, 1, True) + conv(hidden, channels, 1, True) + conv(channels, 1, 1, True)


@pytest.mark.parametrize("encoder", sorted(SMP_ENCODERS))
def test_smp_unet_scse_attention_and_its_one_difference(encoder):
    """smp builds an attention for the concatenation of every block, even the last one (stride 1, no skip),
    where it never runs; on encoders without a stride-2 feature it also gates the stride-2 block's input,
    which has no skip either. seglab gates only concatenations: with resnet34 the outputs are smp's."""
    reference, model = smp_pair("Unet", encoder, "unet", attention="scse", smp={"decoder_attention_type": "scse"})
    unused = scse_parameters(32)  # the last block's input: 32 channels
    if encoder == "convnext_atto":
        assert count_params(reference) - count_params(model) == unused + scse_parameters(64)
        return
    assert count_params(reference) - count_params(model) == unused == 195
    inner = ((".attention.cSE.", ".channel_gate."), (".attention.sSE.", ".spatial_gate."))
    copy_renamed(reference, model, unet_rules(encoder), inner, unused=("decoder.blocks.4.attention1.",))
    assert_smp_outputs_equal(reference, model)


@pytest.mark.parametrize(
    ("architecture", "decoder"),
    [("FPN", "fpn"), ("PSPNet", "pspnet"), ("UPerNet", "upernet"), ("Segformer", "segformer")],
)
def test_smp_refuses_odd_input_sizes_seglab_takes_them(architecture, decoder):
    reference, model = smp_pair(architecture, "resnet34", decoder)
    x = torch.randn(2, 3, 65, 47)
    with pytest.raises(RuntimeError, match="Expected image height and width divisible by"):
        reference.eval()(x)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, NUM_CLASSES, 65, 47)
