"""Pretrained weights: real offline ImageNet weights classify real photos; remapping and strict key checks;
every registered basenet's `--pretrained imagenet` path, offline; GoogLeNet's full key set; a ViT's fresh pyramid."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from skimage import data as skdata

import seglab
import seglab.models.weights as weights_module
from seglab.errors import CheckpointError, ConfigError, PathError
from seglab.models import BASENETS, build_basenet, load_pretrained
from seglab.models.weights import read_state_dict, remap_lukemelas_efficientnet, resolve_pretrained


@pytest.fixture(scope="module")
def lite0_classifier() -> torch.nn.Module:
    net = build_basenet("efficientnet_lite0")
    state, _ = resolve_pretrained(net, "package")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(remap_lukemelas_efficientnet(state, "tf_efficientnet_lite0"), strict=True)
    return model.eval()


def preprocess(photo: np.ndarray, mean, std) -> torch.Tensor:
    """Resize the short side to 256, centre-crop 224, normalize: the standard ImageNet evaluation."""
    image = Image.fromarray(photo).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    x = torch.from_numpy(np.asarray(image.crop((left, top, left + 224, top + 224))).copy())
    x = x.permute(2, 0, 1).float()[None] / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize(("photo", "classes"), [("chelsea", range(281, 286)), ("coffee", (967, 968))])
def test_efficientnet_lite0_package_weights_classify_real_photos(lite0_classifier, photo, classes):
    model = seglab.build_model("efficientnet_lite0", "fcn32s", 2)  # normalization from the FE's config
    x = preprocess(getattr(skdata, photo)(), model.input_mean, model.input_std)
    with torch.no_grad():
        top1 = lite0_classifier(x).argmax(1).item()
    assert top1 in classes


def test_basenet_loaded_from_package_equals_the_classifier_trunk(lite0_classifier):
    model = seglab.build_model("efficientnet_lite0", "fcn8s", 3, pretrained="package").eval()
    x = preprocess(skdata.chelsea(), model.input_mean, model.input_std)
    with torch.no_grad():
        trunk = lite0_classifier.blocks(lite0_classifier.bn1(lite0_classifier.conv_stem(x)))
        features = model.basenet(x)
    assert torch.equal(features[32], trunk)


def test_package_report_lists_the_ignored_classifier():
    net = build_basenet("efficientnet_lite0")
    report = load_pretrained(net, "package")
    assert report.loaded == len(net.state_dict())
    assert report.ignored == [
        "body.bn2.bias",
        "body.bn2.num_batches_tracked",
        "body.bn2.running_mean",
        "body.bn2.running_var",
        "body.bn2.weight",
        "body.classifier.bias",
        "body.classifier.weight",
        "body.conv_head.weight",
    ]


def test_mismatched_keys_are_an_error_listing_them(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer9.weight"] = torch.zeros(1)
    del state["layer1.0.conv1.weight"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(build_basenet("resnet18"), str(path))
    message = str(err.value)
    assert message.startswith(f"pretrained weights {path} do not match basenet 'resnet18': ")
    assert "unexpected keys: body.layer9.weight; missing keys: body.layer1.0.conv1.weight" in message
    assert "\n" not in message


def test_torchvision_resnet18_checkpoint_in_ddp_wrapper_loads_into_timm_basenet(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    net = build_basenet("resnet18").eval()
    report = load_pretrained(net, str(path))
    assert report.ignored == ["body.fc.bias", "body.fc.weight"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference.layer4(
            reference.layer3(
                reference.layer2(reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))
            )
        )
        assert torch.allclose(net(x)[32], expected, atol=1e-6)


def test_vgg16_classifier_becomes_fc6_fc7_convolutions(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.vgg16(weights=None).eval()
    path = tmp_path / "vgg16.safetensors"
    save_file(reference.state_dict(), str(path))
    net = build_basenet("vgg16").eval()
    report = load_pretrained(net, str(path))
    assert report.ignored == ["classifier.6.bias", "classifier.6.weight"]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        pool5 = reference.features(x)
        fc7 = reference.classifier[:5](torch.flatten(pool5, 1))  # fc6, relu, dropout, fc7, relu
        ours = net(x)[32]
    assert ours.shape == (1, 4096, 7, 7)
    # with the 7x7 pool5 map, the centre of the convolutional fc7 sees exactly the Linear layers' input
    assert torch.allclose(ours[0, :, 3, 3], fc7[0], atol=1e-4)


def test_googlenet_checkpoint_maps_into_inception_v1(tmp_path):
    """torchvision's ImageNet GoogLeNet checkpoint holds the auxiliary classifiers aux1/aux2 too (its weights are
    loaded into googlenet(aux_logits=True)): that real key set loads, the aux heads ignored and reported."""
    torch.manual_seed(0)
    reference = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).eval()
    assert any(k.startswith("aux1.") for k in reference.state_dict())
    path = tmp_path / "googlenet.pth"
    torch.save(reference.state_dict(), path)
    net = build_basenet("inception_v1").eval()
    report = load_pretrained(net, str(path))
    aux = sorted(f"net.{k}" for k in reference.state_dict() if k.startswith(("aux1.", "aux2.")))
    assert report.ignored == sorted(["net.fc.bias", "net.fc.weight", *aux])
    assert len(aux) == 2 * 10  # per aux head: a conv, its BN (5 tensors with the batch counter), fc1, fc2
    assert report.loaded == len(net.state_dict())
    assert torch.equal(
        net.state_dict()["net.inception5b.branch1.conv.weight"],
        reference.state_dict()["inception5b.branch1.conv.weight"],
    )


# The constructor options under which each torchvision architecture's DEFAULT checkpoint was saved.
TORCHVISION_CHECKPOINT_OPTIONS = {"googlenet": {"aux_logits": True, "init_weights": False}}


def local_timm_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The key set and shapes of timm's pretrained weights `name`, built locally with (seeded) random values."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        return timm.create_model(name, pretrained=False).state_dict()


def local_torchvision_state_dict(arch: str, weights: str) -> dict[str, torch.Tensor]:
    """The key set and shapes of torchvision's checkpoint `weights` of `arch`, built locally with (seeded)
    random values."""
    assert weights == "DEFAULT"
    with torch.random.fork_rng():
        torch.manual_seed(1)
        options = TORCHVISION_CHECKPOINT_OPTIONS.get(arch, {})
        return torchvision.models.get_model(arch, weights=None, **options).state_dict()


@pytest.mark.parametrize("basenet", BASENETS.names())
def test_every_basenet_loads_its_imagenet_weights_offline(basenet, monkeypatch):
    """`--pretrained imagenet`, for every registered basenet, through seglab's own resolution and key mapping:
    the hub download is replaced by the source model's state dict built locally (the offline packages load
    their real files); every tensor lands in the basenet, only the classifier is left out."""
    monkeypatch.setattr(weights_module, "timm_hub_state_dict", local_timm_state_dict)
    monkeypatch.setattr(weights_module, "torchvision_hub_state_dict", local_torchvision_state_dict)
    torch.manual_seed(0)
    net = build_basenet(basenet)
    state, source = resolve_pretrained(net, "imagenet")
    spec = BASENETS[basenet]
    assert source.startswith("package") if spec.offline_weights else source == spec.hub_weights()
    report = load_pretrained(net, "imagenet")
    assert report.loaded == len(net.state_dict()) and report.fresh == []
    assert report.ignored and all(k.startswith(weights_module._classifier_prefixes(net)) for k in report.ignored)
    own = net.state_dict()
    converted = weights_module._to_basenet_keys(net, state)
    assert sorted(own) == sorted(k for k in converted if k not in report.ignored)
    key = next(k for k in own if own[k].dtype.is_floating_point and own[k].numel() > 1)
    assert torch.equal(own[key], converted[key])


def test_vit_loads_timm_weights_and_reports_its_fresh_pyramid(monkeypatch):
    monkeypatch.setattr(weights_module, "timm_hub_state_dict", local_timm_state_dict)
    net = build_basenet("vit_tiny_patch16_224")
    report = load_pretrained(net, "imagenet")
    assert report.source == "timm:vit_tiny_patch16_224"
    assert report.ignored == ["body.head.bias", "body.head.weight", "body.norm.bias", "body.norm.weight"]
    assert report.fresh and all(k.startswith("pyramid.") for k in report.fresh)
    assert report.loaded + len(report.fresh) == len(net.state_dict())


def test_read_state_dict_errors():
    with pytest.raises(PathError, match="pretrained weights file /nonexistent.pth does not exist"):
        read_state_dict("/nonexistent.pth")


def test_no_offline_package_for_vgg16():
    with pytest.raises(
        ConfigError,
        match="--pretrained package: no offline weights package for basenet 'vgg16'; "
        "packages exist for efficientnet_lite0, efficientnet_lite1, efficientnet_lite2",
    ):
        resolve_pretrained(build_basenet("vgg16"), "package")


def test_malicious_pickle_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"weight": Payload()}, path)
    with pytest.raises(
        CheckpointError,
        match=r"pretrained weights .*evil.pth cannot be loaded: UnpicklingError: "
        r"Weights only load failed",
    ):
        read_state_dict(path)
