"""Fine-tuning from a seglab run (`seglab train --init-from RUN|CHECKPOINT`): the source's basenet and decoder
weights are copied into the new model; only the layers whose shape depends on the number of classes (the
classifier layers) are remapped class by class.

Which tensors those are, and along which dimensions, is found by building the decoder a second time on the
meta device with one class more: every entry whose shape changes is a class layer and the dimensions that
change are its class dimensions (a 1x1 score conv has one, FCN's class-to-class deconvolution two). So any
decoder, plugins included, is handled without a list of layer names. Classes are paired by name, and by
`--class-map OLD=NEW` (which adds pairs or overrides a name match); a paired class keeps its weights, every
other one keeps the fresh initialization the new model was built with. Nothing of the source's optimizer,
schedule or step is carried.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from seglab import plugins
from seglab.config import TrainConfig
from seglab.engine.checkpoint import config_of, model_weights, read_checkpoint
from seglab.errors import ConfigError
from seglab.models import SegmentationModel, build_decoder
from seglab.runs import resolve_target

INHERITED = ("basenet", "decoder", "output_stride", "decoder_options")
AUX = "aux_head."  # state-dict prefix of the auxiliary head (training only)
"""Keys a fine-tuning run takes from its source unless the command line sets them."""


@dataclass
class Source:
    """The checkpoint a run is initialized from: its path, config, step, class names and weights."""

    path: Path
    config: TrainConfig
    step: int
    class_names: list[str]
    weights: dict[str, Tensor]
    kind: str  # "ema" or "model", see checkpoint.model_weights

    def describe(self) -> str:
        """Return 'PATH (step N, EMA weights)' for the runlog."""
        kind = "EMA weights" if self.kind == "ema" else "trained weights"
        return f"{self.path} (step {self.step}, {kind})"


def read_source(path: str) -> Source:
    """Return the checkpoint `--init-from` names (a run folder means its last.pt), its plugins imported."""
    target = resolve_target(path)
    state = read_checkpoint(target.checkpoint)
    config = config_of(state, str(target.checkpoint))
    for module in config.plugins:
        plugins.import_module(module, f" (named by the config of {target.checkpoint})")
    weights, kind = model_weights(state, ema=True)
    return Source(target.checkpoint, config, int(state["step"]), list(state["dataset"]["class_names"]), weights, kind)


def inherit(cfg: TrainConfig, explicit: dict, source: Source) -> dict:
    """Return the keys a new run takes from its source: model keys the caller did not set, and its plugins."""
    keys = {k: getattr(source.config, k) for k in INHERITED if k not in explicit}
    keys["plugins"] = list(dict.fromkeys([*cfg.plugins, *source.config.plugins]))
    return keys


def check_source(cfg: TrainConfig, source: Source) -> None:
    """Refuse a source whose basenet cannot give this run its weights."""
    if source.config.basenet != cfg.basenet:
        raise ConfigError(
            f"--init-from {source.path} holds basenet {source.config.basenet!r}, not --basenet {cfg.basenet!r}: "
            "its weights do not fit (leave --basenet out to use the source's, or use --pretrained for ImageNet weights)"
        )


def _class_index(token: str, names: list[str], which: str) -> int:
    """Return the index of class `token` (a name, or an index) in `names`; raise naming the known ones."""
    if token in names:
        return names.index(token)
    if token.isdigit() and int(token) < len(names):
        return int(token)
    raise ConfigError(f"--class-map: {token!r} is not a class of the {which} classes: {', '.join(names)}")


def class_pairs(old: list[str], new: list[str], class_map: list[str]) -> list[tuple[int, int]]:
    """Return (old index, new index) of the classes whose weights carry over: every class name both lists
    share, plus the `class_map` pairs (OLD=NEW, names or indices), which also override a name match."""
    chosen = {j: old.index(name) for j, name in enumerate(new) if name in old}
    mapped: dict[int, str] = {}
    for item in class_map:
        left, _, right = (part.strip() for part in item.partition("="))
        i, j = _class_index(left, old, "source run's"), _class_index(right, new, "dataset's")
        if j in mapped:
            raise ConfigError(f"--class-map maps both {mapped[j]!r} and {left!r} to {new[j]!r}: give one source class")
        mapped[j] = left
        chosen[j] = i
    return sorted(((i, j) for j, i in chosen.items()), key=lambda pair: pair[1])


def class_dims(model: SegmentationModel, cfg: TrainConfig) -> dict[str, list[int]]:
    """Return {decoder state key: its class dimensions} for the tensors whose shape depends on the class count."""
    with torch.device("meta"):
        probe = build_decoder(cfg.decoder, model.basenet, model.num_classes + 1, **cfg.decoder_options)
    ours, wider = model.decoder.state_dict(), probe.state_dict()
    return {
        f"decoder.{key}": [d for d, (a, b) in enumerate(zip(value.shape, wider[key].shape, strict=True)) if a != b]
        for key, value in ours.items()
        if value.shape != wider[key].shape
    }


def _copy_classes(fresh: Tensor, old: Tensor, dims: list[int], pairs: list[tuple[int, int]]) -> Tensor:
    """Return `fresh` with the entries of paired classes (along every class dimension) taken from `old`."""
    out = fresh.clone()
    if not pairs:
        return out
    old_idx = torch.tensor([i for i, _ in pairs])
    new_idx = torch.tensor([j for _, j in pairs])
    lead = list(range(len(dims)))
    # Class dimensions first, then one broadcast index per class dimension: every combination of paired classes.
    target, source = out.movedim(dims, lead), old.movedim(dims, lead)
    shape = [[-1 if k == n else 1 for k in lead] for n in lead]
    target[tuple(new_idx.view(s) for s in shape)] = source[tuple(old_idx.view(s) for s in shape)].to(out)
    return out


def transfer_weights(model: SegmentationModel, cfg: TrainConfig, source: Source, classes: list[str]) -> list[str]:
    """Load the source's weights into `model` (built for `classes`); return the runlog lines saying what was
    loaded, which class layers were remapped and which classes kept the fresh initialization."""
    basenet = {k.removeprefix("basenet."): v for k, v in source.weights.items() if k.startswith("basenet.")}
    model.basenet.load_state_dict(basenet)
    notes = [f"initialized from {source.describe()}: basenet ({len(basenet)} tensors)"]
    same_decoder = (source.config.decoder, source.config.decoder_options) == (cfg.decoder, cfg.decoder_options)
    if not same_decoder:
        notes.append(
            f"  decoder {cfg.decoder} {cfg.decoder_options or ''} differs from the source's {source.config.decoder} "
            f"{source.config.decoder_options or ''}: the decoder starts from its fresh initialization"
        )
        return notes
    if source.class_names == classes and not cfg.class_map:
        # The auxiliary head (training only) carries over when both have one; the run's own starts fresh
        # when the source has none, and the source's is left out when the run has none.
        source_aux = {k: v for k, v in source.weights.items() if k.startswith(AUX)}
        weights = {k: v for k, v in source.weights.items() if not k.startswith(AUX)}
        if model.aux_head is not None:
            fresh_aux = {k: v for k, v in model.state_dict().items() if k.startswith(AUX)}
            weights.update(source_aux or fresh_aux)
        model.load_state_dict(weights)
        notes[0] += f" and decoder, same {len(classes)} classes"
        if model.aux_head is not None:
            origin = "the source's weights" if source_aux else "fresh initialization"
            notes.append(f"  auxiliary head: {origin}")
        return notes
    pairs = class_pairs(source.class_names, classes, cfg.class_map)
    dims = class_dims(model, cfg)
    state = model.state_dict()
    for key, value in source.weights.items():
        if key.startswith("decoder."):
            state[key] = _copy_classes(state[key], value, dims[key], pairs) if key in dims else value
    model.load_state_dict(state)
    kept = {j for _, j in pairs}
    carried = ", ".join(
        name if source.class_names[i] == name else f"{source.class_names[i]}->{name}"
        for i, name in ((i, classes[j]) for i, j in pairs)
    )
    fresh = ", ".join(name for j, name in enumerate(classes) if j not in kept)
    counts = (len(classes), len(source.class_names))
    notes[0] += f" and decoder; {counts[0]} classes " + (
        f"instead of the source's {counts[1]}" if counts[0] != counts[1] else "paired by name and --class-map"
    )
    notes.append(f"  class layers re-initialized: {', '.join(dims)}")
    notes.append(f"  classes keeping the source's weights: {carried or 'none'}")
    notes.append(f"  classes starting fresh: {fresh or 'none'}")
    if model.aux_head is not None:
        notes.append("  auxiliary head: fresh initialization (its classes differ from the source's)")
    return notes
