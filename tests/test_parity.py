"""Parity with reference implementations: torchvision's DeepLabV3-ResNet50 and LR-ASPP-MobileNetV3-Large
(same parameters; same outputs with weights copied across) and smp's Linknet('resnet18') (the parameter
count, with every difference itemized as in the README)."""

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

    def smp_block(m: int, n: int) -> int:  # 1x1, 4x4 transposed conv with bias, 1x1; each + BN
        return (
            conv(m, m // 4, 1, False)
            + bn(m // 4)
            + conv(m // 4, m // 4, 4, True)
            + bn(m // 4)
            + conv(m // 4, n, 1, False)
            + bn(n)
        )

    def seglab_block(m: int, n: int) -> int:  # 1x1, 3x3 transposed conv (paper), 1x1; each + BN
        return (
            conv(m, m // 4, 1, False)
            + bn(m // 4)
            + conv(m // 4, m // 4, 3, False)
            + bn(m // 4)
            + conv(m // 4, n, 1, False)
            + bn(n)
        )

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
