"""`torchrun --nproc_per_node 2` (gloo, CPU) against one process: same losses for the same global batch, the
same evaluation confusion matrix, and only rank 0 writing."""

from __future__ import annotations

import json
import os
import runpy
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seglab.cli import main
from seglab.engine import checkpoint

pytestmark = [pytest.mark.xdist_group("ddp"), pytest.mark.slow]

TINY = shlex.split(
    "train --basenet lcnet_050 --decoder fcn8s --pretrained none --device cpu "
    "--dataset-options length=12 size=32 --crop 32 --batch-size 4 --iters 5 --log-every 1 "
    "--eval-every 2 --workers 0 --freeze-bn --learnrate 0.05"
)

EVAL_SCRIPT = """
import sys
import torch
from seglab.data.base import build_dataset
from seglab.data.loader import AugmentedDataset, Collate
from seglab.engine import distributed
from seglab.engine.sampler import ShardSampler
from seglab.engine.validate import validate
from seglab.models import build_model

info = distributed.init("cpu")
torch.manual_seed(0)
model = build_model("lcnet_050", "fcn8s", 6)
with torch.no_grad():  # the score layers start at zero; give the net varied predictions
    for p in model.decoder.parameters():
        p.normal_()
val = AugmentedDataset(build_dataset("synthetic", None, "val", length=7, size=32), None)
loader = torch.utils.data.DataLoader(val, batch_size=1, collate_fn=Collate(255),
                                     sampler=ShardSampler(range(len(val)), info.rank, info.world_size))
cm = validate(model, loader, 255, info.device, show=False)
if info.is_main:
    torch.save(cm, sys.argv[1])
distributed.cleanup()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run `torchrun --nproc-per-node 2 <args>` on 127.0.0.1; retry once if the port was taken meanwhile."""
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    for _ in range(2):
        cmd = [
            sys.executable,
            *shlex.split(
                "-m torch.distributed.run --nproc-per-node 2 --max-restarts 0 --rdzv-backend c10d --rdzv-endpoint"
            ),
            f"127.0.0.1:{free_port()}",
            *args,
        ]
        result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        if result.returncode == 0 or "address already in use" not in result.stderr.lower():
            return result
    return result


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    result = torchrun(["-m", "seglab.cli", *TINY, "--runs-root", str(tmp_path / "ddp"), "--run-name", "r"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert main([*TINY, "--runs-root", str(tmp_path / "one"), "--run-name", "r"]) == 0
    two, one = records(tmp_path / "ddp" / "r"), records(tmp_path / "one" / "r")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3, 4, 5]
    for a, b in zip(two, one, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert "val_miou_partial" in two[1] and "val_miou" in two[-1]
    assert [p.name for p in (tmp_path / "ddp").iterdir()] == ["r"]  # only rank 0 made a run folder
    assert result.stdout.count("run folder:") == 1
    state = checkpoint.read_checkpoint(tmp_path / "ddp" / "r" / "checkpoints" / "last.pt")
    assert len(state["rng"]) == 2  # one RNG entry per rank
    assert "2 x cpu" in (tmp_path / "ddp" / "r" / "runlog").read_text()


def test_evaluation_on_two_processes_gives_the_same_confusion_matrix(tmp_path, monkeypatch):
    script = tmp_path / "evaluate.py"
    script.write_text(EVAL_SCRIPT)
    result = torchrun([str(script), str(tmp_path / "two.pt")], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "one.pt")])
    runpy.run_path(str(script), run_name="__main__")
    two, one = torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt")
    assert two.dtype == torch.int64 and int(one.sum()) == 7 * 32 * 32  # every pixel once: no padding samples
    assert torch.equal(two, one)
    assert int(one.diagonal().sum()) < int(one.sum())  # not a degenerate all-one-class matrix
