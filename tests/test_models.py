"""The basenet registry, the meta-architecture and FCN-32s/16s/8s: faithfulness to the FCN paper and the seed;
every registered basenet keeps the tap contract."""

from __future__ import annotations

import pytest
import torch

import seglab
import seglab.cli
from seglab.errors import ConfigError
from seglab.models import BASENETS, DECODERS, SEED_BASENETS, build_basenet
from seglab.models.complexity import count_gflops, count_params
from seglab.models.fcn import bilinear_kernel

SEED_TAPS = {  # nominal stride -> channels, per seed basenet
    "vgg16": {4: 128, 8: 256, 16: 512, 32: 4096},
    "inception_v1": {4: 192, 8: 480, 16: 832, 32: 1024},
    "resnet18": {4: 64, 8: 128, 16: 256, 32: 512},
    "mobilenet_v1": {4: 128, 8: 256, 16: 512, 32: 1024},
    "mobilenet_v2": {4: 24, 8: 32, 16: 96, 32: 320},
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
    assert sorted(features) == [t.reduction for t in net.taps] == [4, 8, 16, 32]
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
    assert strides == {r: min(r, output_stride) for r in (4, 8, 16, 32)}
    features = net(torch.randn(1, 3, 64, 64))
    assert features[32].shape[-1] == 64 // output_stride


def test_output_stride_refused_clearly():
    with pytest.raises(ConfigError, match=r"basenet 'vgg16' does not support --output-stride 8"):
        build_basenet("vgg16", 8)
    with pytest.raises(ConfigError, match=r"--output-stride must be one of \(8, 16, 32\), got 4"):
        build_basenet("resnet18", 4)
    with pytest.raises(ConfigError, match=r"basenet 'mobilenet_v3_large' supports --output-stride 32 or 16, not 8"):
        build_basenet("mobilenet_v3_large", 8)


def test_decoder_rejects_a_basenet_without_needed_strides():
    with pytest.raises(ConfigError) as err:
        meta_model("vit_tiny_patch16_224", "fcn8s")
    assert str(err.value) == (
        "decoder 'fcn8s' needs taps at strides [8, 16, 32], but basenet 'vit_tiny_patch16_224' "
        "only has [16] (missing [8, 32])"
    )


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
