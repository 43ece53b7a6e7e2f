"""The basenet registry, the meta-architecture and FCN-32s/16s/8s: faithfulness to the FCN paper and the seed;
every registered basenet keeps the tap contract."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

import seglab
import seglab.cli
from seglab.errors import ConfigError
from seglab.models import BASENETS, DECODERS, SEED_BASENETS, Basenet, SegmentationModel, Tap, build_basenet
from seglab.models.basenets import FAMILIES
from seglab.models.complexity import count_gflops, count_params
from seglab.models.fcn import bilinear_kernel
from seglab.models.meta import pad_to_multiple

SEED_TAPS = {  # nominal stride -> channels, per seed basenet
    "vgg16": {2: 64, 4: 128, 8: 256, 16: 512, 32: 4096},
    "inception_v1": {2: 64, 4: 192, 8: 480, 16: 832, 32: 1024},
    "resnet18": {2: 64, 4: 64, 8: 128, 16: 256, 32: 512},
    "mobilenet_v1": {2: 64, 4: 128, 8: 256, 16: 512, 32: 1024},
    "mobilenet_v2": {2: 16, 4: 24, 8: 32, 16: 96, 32: 320},
}


def meta_model(basenet: str, decoder: str, num_classes: int = 21, **kwargs) -> seglab.models.SegmentationModel:
    with torch.device("meta"):
        return seglab.build_model(basenet, decoder, num_classes, **kwargs)


def test_fcn8s_vgg16_has_the_fcn_paper_parameter_count():
    model = meta_model("vgg16", "fcn8s")
    vgg16_convs = 14_714_688  # torchvision vgg16().features
    fc6 = 512 * 7 * 7 * 4096 + 4096
    fc7 = 4096 * 4096 + 4096
    scores = (4096 + 1) * 21 + (512 + 1) * 21 + (256 + 1) * 21  # score_fr, score_pool4, score_pool3
    assert count_params(model) == vgg16_convs + fc6 + fc7 + scores == 134_362_751  # paper: 134M


def test_fcn_variants_differ_only_in_their_skip_layers():
    keys = {d: meta_model("vgg16", d).state_dict() for d in ("fcn32s", "fcn16s", "fcn8s")}
    shared = set(keys["fcn32s"])
    assert set(keys["fcn16s"]) - shared == {"decoder.score_skips.16.weight", "decoder.score_skips.16.bias"}
    assert set(keys["fcn8s"]) - set(keys["fcn16s"]) == {"decoder.score_skips.8.weight", "decoder.score_skips.8.bias"}
    for name in shared:
        assert keys["fcn8s"][name].shape == keys["fcn32s"][name].shape


@pytest.mark.parametrize("basenet", SEED_BASENETS)
def test_seed_basenet_taps(basenet):
    net = build_basenet(basenet)
    assert {t.reduction: t.channels for t in net.taps} == SEED_TAPS[basenet]
    assert all(t.stride == t.reduction for t in net.taps)


@pytest.mark.parametrize("basenet", BASENETS.names())
def test_every_basenet_keeps_the_tap_contract(basenet):
    with torch.device("meta"):
        net = build_basenet(basenet)
    features = net(torch.zeros(1, 3, 64, 96, device="meta"))
    assert sorted(features) == [t.reduction for t in net.taps] == [2, 4, 8, 16, 32]
    for tap in net.taps:
        assert features[tap.reduction].shape[1:] == (tap.channels, 64 // tap.stride, 96 // tap.stride), tap
    spec = BASENETS[basenet]
    assert net.spec is spec and (net.input_mean, net.input_std) == spec.normalization()
    assert 32 in spec.output_strides


@pytest.mark.parametrize("basenet", BASENETS.names())
@pytest.mark.parametrize("size", [(333, 500), (375, 500), (65, 97)])
def test_output_matches_odd_input_sizes(basenet, size):
    model = meta_model(basenet, "fcn8s", 21)
    out = model(torch.zeros(1, 3, *size, device="meta"))
    assert out.shape == (1, 21, *size)


@pytest.mark.parametrize("basenet", BASENETS.names())
def test_real_forward_odd_size(basenet):
    torch.manual_seed(0)
    model = seglab.build_model(basenet, "fcn8s", 3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 45, 61))
    assert out.shape == (1, 3, 45, 61)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("basenet", BASENETS.names())
@pytest.mark.parametrize("decoder", ["fcn32s", "fcn8s"])
def test_every_trainable_parameter_receives_a_gradient(basenet, decoder):
    torch.manual_seed(0)
    model = seglab.build_model(basenet, decoder, 3, trainable_upsampling=True)
    # Zero-initialised layers (FCN's score layers, timm's last BN gamma per residual block) block gradients at
    # step 0 by design; perturb them so that a disconnected parameter is the only way to get no gradient.
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(std=0.01)
    out = model(torch.randn(2, 3, 64, 64))
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert no_grad == []


def test_fcn_starts_from_zero_scores_and_skips_keep_the_coarser_output():
    torch.manual_seed(0)
    model = seglab.build_model("resnet18", "fcn8s", 4).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert model(x).abs().max() == 0
        torch.nn.init.normal_(model.decoder.score_fr.weight)
        fcn32 = seglab.build_model("resnet18", "fcn32s", 4).eval()
        fcn32.load_state_dict(model.state_dict(), strict=False)
        # zero skip scores: FCN-8s equals FCN-32s up to the order of bilinear resizes
        assert torch.allclose(model(x).mean(), fcn32(x).mean(), atol=1e-4)


def test_same_seed_builds_identical_models():
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(seglab.build_model("mobilenet_v2", "fcn8s", 5).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    torch.manual_seed(124)
    other = seglab.build_model("mobilenet_v2", "fcn8s", 5).state_dict()
    assert not all(torch.equal(states[0][k], other[k]) for k in states[0])


def test_bilinear_kernel_upsamples_a_constant_to_a_constant():
    deconv = torch.nn.ConvTranspose2d(2, 2, 4, stride=2, padding=1, bias=False)
    deconv.weight.data.copy_(bilinear_kernel(2, 4))
    out = deconv(torch.ones(1, 2, 5, 5))
    assert out.shape == (1, 2, 10, 10)
    assert torch.allclose(out[..., 1:-1, 1:-1], torch.ones(1, 2, 8, 8))
    # a ramp is interpolated linearly in the interior
    ramp = torch.arange(5.0).repeat(5, 1)[None, None].repeat(1, 2, 1, 1)
    row = deconv(ramp)[0, 0, 4, 1:-1]
    assert torch.allclose(row[1:] - row[:-1], torch.full((7,), 0.5))


@pytest.mark.parametrize(("basenet", "output_stride"), [("resnet18", 8), ("resnet18", 16), ("mobilenet_v2", 8)])
def test_output_stride_uses_dilation(basenet, output_stride):
    net = build_basenet(basenet, output_stride)
    strides = {t.reduction: t.stride for t in net.taps}
    assert strides == {r: min(r, output_stride) for r in (2, 4, 8, 16, 32)}
    features = net(torch.randn(1, 3, 64, 64))
    assert features[32].shape[-1] == 64 // output_stride


def test_output_stride_refused_clearly():
    with pytest.raises(ConfigError, match=r"basenet 'vgg16' does not support --output-stride 8"):
        build_basenet("vgg16", 8)
    with pytest.raises(ConfigError, match=r"--output-stride must be one of \(8, 16, 32\), got 4"):
        build_basenet("resnet18", 4)
    with pytest.raises(ConfigError, match=r"basenet 'mobilenet_v3_large' supports --output-stride 32 or 16, not 8"):
        build_basenet("mobilenet_v3_large", 8)


def test_unknown_names_are_errors_listing_choices():
    with pytest.raises(
        ConfigError,
        match=r"unknown basenet 'resnet_v9': choose one of vgg16, inception_v1, .* a "
        r"timm model name \(see `timm.list_models\(\)`\), or one a plugin",
    ):
        build_basenet("resnet_v9")
    with pytest.raises(ConfigError, match="unknown decoder 'fcn2s'; choose one of: fcn32s, fcn16s, fcn8s"):
        DECODERS["fcn2s"]


def test_aliases_and_any_timm_model():
    assert BASENETS.canonical("resnet_v1_18") == "resnet18"
    assert BASENETS.canonical("googlenet") == "inception_v1"
    assert BASENETS.canonical("resnet_v1_34") == "resnet34"
    net = build_basenet("timm:convnext_atto")
    assert [t.reduction for t in net.taps] == [4, 8, 16, 32]
    assert meta_model("convnext_atto", "fcn8s", 3)(torch.zeros(1, 3, 70, 90, device="meta")).shape == (1, 3, 70, 90)


def test_normalization_comes_from_the_pretrained_config():
    assert seglab.build_model("efficientnet_lite0", "fcn32s", 2).input_mean == (0.5, 0.5, 0.5)
    model = seglab.build_model("resnet18", "fcn32s", 2)
    assert model.input_mean == pytest.approx((0.485, 0.456, 0.406))
    assert model.input_std == pytest.approx((0.229, 0.224, 0.225))
    images = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    x = model.normalize(images)
    assert x[0, 0, 0, 0].item() == pytest.approx(-0.485 / 0.229)
    assert x[0, 2, 0, 1].item() == pytest.approx((1 - 0.406) / 0.225)
    with pytest.raises(TypeError, match="normalize expects uint8 images, got torch.float32"):
        model.normalize(images.float())


def test_gflops_of_a_single_conv_by_hand():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_gflops(conv, (10, 12)) == pytest.approx(2 * 3 * 8 * 9 * 10 * 12 / 1e9)


def test_models_command_prints_the_table(capsys):
    assert seglab.cli.main(["models", "--size", "64", "--basenets", "resnet18,vgg16", "--decoders", "fcn8s"]) == 0
    out = capsys.readouterr().out
    assert "| resnet18 | fcn8s | 11.20 |" in out
    assert "| vgg16 | fcn8s | 134.36 |" in out
    assert "2 FLOPs per multiply-add" in out


# --- timm families: channels-last outputs, ViTs through forward_intermediates and a simple feature pyramid ---


@functools.cache
def family_basenet(name: str) -> Basenet:
    torch.manual_seed(0)
    return build_basenet(name).eval()


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.example)
def test_every_tested_family_keeps_the_tap_contract(family):
    """NCHW maps at strides 4 to 32 (and 2 where the stem has one), of the tap's channels and the padded
    input's size over the tap's stride, for an input of any size."""
    net = family_basenet(family.example)
    assert {4, 8, 16, 32} <= {t.reduction for t in net.taps}
    x = torch.randn(1, 3, 75, 101, generator=torch.Generator().manual_seed(0))
    padded = pad_to_multiple(x, net.pad_multiple)
    with torch.no_grad():
        features = net(padded)
    assert sorted(features) == [t.reduction for t in net.taps]
    for tap in net.taps:
        expected = tuple(math.ceil(s / tap.stride) for s in padded.shape[-2:])
        assert features[tap.reduction].shape == (1, tap.channels, *expected), tap
    model = SegmentationModel(net, DECODERS["fcn8s"](net, 3)).eval()
    with torch.no_grad():
        assert model(x).shape == (1, 3, 75, 101)


def test_channels_last_outputs_become_nchw():
    """Swin's features_only outputs are NHWC (timm's output_fmt); the basenet returns them permuted."""
    net = family_basenet("swin_tiny_patch4_window7_224")
    assert net.channels_last_output and net.body.output_fmt == "NHWC"
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = net.body(x)
        features = net(x)
    for tap, nhwc in zip(net.taps, raw, strict=True):
        assert nhwc.shape[-1] == tap.channels
        assert torch.equal(features[tap.reduction], nhwc.permute(0, 3, 1, 2))


def test_patch_stems_are_padded_and_the_logits_cropped_back():
    """A ConvNeXt's 4x4 patch stem would drop the last rows and columns of a 65 x 47 input; the model pads the
    input to the deepest stride and crops the logits, so its output is the padded input's, cropped."""
    net = family_basenet("convnext_atto")
    assert net.pad_multiple == 32 and build_basenet("resnet18").pad_multiple == 1
    model = SegmentationModel(net, DECODERS["fcn8s"](net, 3)).eval()
    torch.nn.init.normal_(model.decoder.score_fr.weight)
    x = torch.randn(1, 3, 65, 47, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
        padded = model(pad_to_multiple(x, 32))
    assert padded.shape == (1, 3, 96, 64)
    assert torch.equal(out, padded[..., :65, :47])


def test_vit_taps_four_blocks_through_forward_intermediates():
    """vit_tiny (12 blocks, 192 channels, patch 16): blocks 3, 6, 9 and 12 become the taps at strides 4, 8, 16
    and 32 (ViTDet widths 48, 96, 192, 192); the stride-16 tap is block 9's token map, layer-normalized."""
    net = family_basenet("vit_tiny_patch16_224")
    assert net.block_indices == [2, 5, 8, 11]
    assert [(t.name, t.reduction, t.channels, t.stride) for t in net.taps] == [
        ("blocks.2", 4, 48, 4),
        ("blocks.5", 8, 96, 8),
        ("blocks.8", 16, 192, 16),
        ("blocks.11", 32, 192, 32),
    ]
    assert net.pad_multiple == 32 and isinstance(net.body.head, torch.nn.Identity)  # classifier pruned
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        blocks = net.body.forward_intermediates(x, indices=[8], intermediates_only=True)
        features = net(x)
    expected = F.layer_norm(blocks[0].permute(0, 2, 3, 1), (192,), eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(features[16], expected)
    assert features[4].shape == (1, 48, 16, 24) and features[32].shape == (1, 192, 2, 3)


def test_vit_position_embeddings_are_interpolated_to_the_input_size():
    """At 64 x 96 (a 4 x 6 token grid instead of 224's 14 x 14), the basenet equals a ViT built for that size
    whose position embeddings timm resampled from the 224 model's."""
    net = family_basenet("vit_tiny_patch16_224")
    assert net.body.dynamic_img_size
    fixed = timm.create_model("vit_tiny_patch16_224", img_size=(64, 96)).eval()
    state = dict(net.body.state_dict())
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], (4, 6), num_prefix_tokens=1)
    fixed.load_state_dict(state, strict=False)  # the pruned head and final norm stay as built
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = net.body.forward_intermediates(x, indices=[11], intermediates_only=True)[0]
        reference = fixed.forward_intermediates(x, indices=[11], intermediates_only=True)[0]
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_patch_14_vits_have_fractional_strides_and_pad_to_28():
    net = family_basenet("eva02_tiny_patch14_224")
    assert [t.stride for t in net.taps] == [3.5, 7, 14, 28] and net.pad_multiple == 28
    model = SegmentationModel(net, DECODERS["deeplabv3"](net, 3)).eval()
    assert model.decoder.rates == (3, 7, 10)  # (6, 12, 18) at stride 16, scaled to stride 28
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 61)).shape == (1, 3, 50, 61)


def test_vits_refuse_dilation_and_report_their_fresh_pyramid():
    with pytest.raises(
        ConfigError,
        match=r"basenet 'vit_tiny_patch16_224' \(timm 'vit_tiny_patch16_224'\) is a "
        r"single-stride ViT: its feature pyramid is fixed at strides 4 to 32 and cannot be dilated",
    ):
        build_basenet("vit_tiny_patch16_224", 16)
    assert family_basenet("vit_tiny_patch16_224").fresh_prefixes == ("pyramid.",)


def test_decoders_take_the_coarsest_tap_whatever_its_stride():
    """A basenet whose coarsest tap is at stride 16: FCN-8s decodes it and keeps the stride-8 skip."""
    net = TapsOnly((4, 8, 16))
    decoder = DECODERS["fcn8s"](net, 3)
    assert (decoder.deepest, decoder.skips) == (16, (8,))
    assert sorted(decoder.taps) == [8, 16]
    with pytest.raises(ConfigError, match=r"decoder 'lraspp' needs taps at strides \[8, 16\]"):
        DECODERS["lraspp"](TapsOnly((16,)), 3)


class TapsOnly(Basenet):
    """A basenet stub that only declares taps."""

    def __init__(self, reductions: tuple[int, ...]) -> None:
        super().__init__()
        self.name = "stub"
        self.taps = tuple(Tap(f"t{r}", 8, r, r) for r in reductions)


def test_families_are_documented_in_the_readme():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for family in FAMILIES:
        assert f"`{family.example}`" in readme, family
