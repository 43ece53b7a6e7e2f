"""`seglab train` with a weighted loss sum and the auxiliary head: each term trained and logged (metrics.jsonl,
TensorBoard), the head kept in checkpoints, dropped by `load_run` and absent from the exported ONNX graph and
weights; a ViT, a Swin and a ConvNeXt train with every decoder from the command line."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import onnx
import pytest
import torch
from safetensors import safe_open
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from seglab.cli import main
from seglab.engine.checkpoint import load_run
from seglab.models import DECODERS

TINY = shlex.split(
    "--pretrained none --device cpu --dataset-options length=4 size=32 --crop 32 --batch-size 2 --log-every 1 "
    "--workers 0 --eval-every 0"
)


@pytest.fixture(scope="module")
def aux_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    argv = ["train", "--basenet", "lcnet_050", "--decoder", "fcn8s", *TINY, "--iters", "3", "--runs-root", str(root)]
    assert main([*argv, "--loss", "ce+0.5*dice", "--aux-weight", "0.4", "--run-name", "aux"]) == 0
    return root / "aux"


def test_every_loss_term_is_logged_and_adds_up_to_the_loss(aux_run):
    records = [json.loads(line) for line in (aux_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        terms = record["loss_terms"]
        assert sorted(terms) == ["aux_ce", "aux_dice", "ce", "dice"]
        assert all(value > 0 for value in terms.values())
        assert record["loss"] == pytest.approx(sum(terms.values()), rel=1e-9)
    events = EventAccumulator(str(aux_run)).Reload()
    assert {"train/loss_ce", "train/loss_dice", "train/loss_aux_ce", "train/loss_aux_dice"} <= set(
        events.Tags()["scalars"]
    )


def test_the_aux_head_is_trained_and_dropped_for_inference(aux_run):
    state = torch.load(aux_run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    aux_keys = [k for k in state["model"] if k.startswith("aux_head.")]
    assert aux_keys and state["config"]  # the run keeps training its aux head on resume
    loaded = load_run(aux_run)
    assert loaded.model.aux_head is None
    assert not any(k.startswith("aux_head.") for k in loaded.model.state_dict())
    assert isinstance(loaded.model.train()(torch.randn(2, 3, 64, 64)), torch.Tensor)


@pytest.mark.slow
def test_export_leaves_the_aux_head_out(aux_run):
    assert main(["export", str(aux_run)]) == 0
    graph = onnx.load(str(aux_run / "export" / "model.onnx"))
    names = [init.name for init in graph.graph.initializer] + [node.name for node in graph.graph.node]
    assert names and not any("aux" in name for name in names)
    with safe_open(str(aux_run / "export" / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith("aux_head.") for k in keys)


@pytest.mark.slow
@pytest.mark.parametrize("decoder", DECODERS.names())
@pytest.mark.parametrize("basenet", ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "convnext_atto"])
def test_vit_swin_and_convnext_train_with_every_decoder_from_the_command_line(basenet, decoder, tmp_path):
    argv = ["train", "--basenet", basenet, "--decoder", decoder, *TINY, "--runs-root", str(tmp_path)]
    assert main([*argv, "--iters", "1", "--crop", "48", "--aux-weight", "0.4", "--run-name", "r"]) == 0
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 1 and "val_miou" in records[-1] and "aux_ce" in records[-1]["loss_terms"]
