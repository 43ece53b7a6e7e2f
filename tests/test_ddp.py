"""`torchrun --nproc_per_node 2` (gloo, CPU) against one process: same losses for the same global batch, the
same evaluation confusion matrix, and only rank 0 writing; a rank whose whole share of a batch is skipped
still takes part (no hang); a 2-process run stopped by SIGTERM and resumed equals the uninterrupted one."""

from __future__ import annotations

import json
import os
import runpy
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.cli import main
from seglab.engine import checkpoint
from seglab.engine.sampler import epoch_permutation

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


ENV = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")


def torchrun_command(args: list[str]) -> list[str]:
    """Return `torchrun --nproc-per-node 2 <args>` on a free port of 127.0.0.1."""
    return [
        sys.executable,
        *shlex.split(
            "-m torch.distributed.run --nproc-per-node 2 --max-restarts 0 --rdzv-backend c10d --rdzv-endpoint"
        ),
        f"127.0.0.1:{free_port()}",
        *args,
    ]


def torchrun(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `torchrun --nproc-per-node 2 <args>`; retry once if the port was taken meanwhile."""
    for _ in range(2):
        result = subprocess.run(
            torchrun_command(args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
        )
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


def folder_set(root: Path, bad: str, ids: list[str]) -> Path:
    """A 2-class VOC-layout set of 32 px PNGs (train: `ids`, val: 2 more) whose train image `bad` is torn."""
    rng = np.random.default_rng(0)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("background\nthing\n")
    for name in [*ids, "v0", "v1"]:
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.png")
        label = Image.fromarray((rng.random((32, 32)) > 0.5).astype(np.uint8), mode="P")
        label.putpalette([0, 0, 0, 128, 0, 0])
        label.save(root / "SegmentationClass" / f"{name}.png")
    image = root / "JPEGImages" / f"{bad}.png"
    image.write_bytes(image.read_bytes()[:200])
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("v0\nv1\n")
    return root


def test_a_rank_whose_share_is_all_skipped_keeps_step_with_the_others(tmp_path):
    ids = [f"im{i}" for i in range(6)]
    # batch 2 over 2 ranks: rank 1 takes the second sample of each global batch; make that rank 1's only
    # sample of the first step the torn one, so its whole share is skipped while rank 0 trains
    bad = ids[epoch_permutation(len(ids), 0, 0)[1]]
    data = folder_set(tmp_path / "data", bad, ids)
    args = shlex.split(
        f"train --basenet lcnet_050 --decoder fcn8s --pretrained none --device cpu --dataset folder --data-root {data} "
        "--crop 32 --batch-size 2 --iters 6 --log-every 1 --eval-every 0 --workers 0 --freeze-bn --learnrate 0.05 "
        "--skip-bad-samples"
    )
    result = torchrun(
        ["-m", "seglab.cli", *args, "--runs-root", str(tmp_path / "ddp"), "--run-name", "r"], tmp_path, 120
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert main([*args, "--runs-root", str(tmp_path / "one"), "--run-name", "r"]) == 0
    two, one = records(tmp_path / "ddp" / "r"), records(tmp_path / "one" / "r")
    # 3 steps per epoch: the torn image is drawn once in each epoch (step 1 on rank 1, then wherever it falls)
    skipped_at = [3 * e + epoch_permutation(len(ids), 0, e).tolist().index(ids.index(bad)) // 2 + 1 for e in (0, 1)]
    assert skipped_at[0] == 1
    expected = [sum(at <= step for at in skipped_at) for step in range(1, 7)]
    assert [r["skipped"] for r in two] == [r["skipped"] for r in one] == expected
    for a, b in zip(two, one, strict=True):  # the empty share adds nothing: the loss of rank 0's sample alone
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    runlog = (tmp_path / "ddp" / "r" / "runlog").read_text()  # rank 0 names the samples skipped on either rank
    for step in skipped_at:
        assert f"step {step}: skipped {data / 'JPEGImages' / bad}.png: truncated image" in runlog


DDP_RESUME = shlex.split(
    "train --basenet lcnet_050 --decoder fcn8s --pretrained none --device cpu --dataset-options length=16 size=32 "
    "--crop 32 --batch-size 4 --iters 16 --log-every 1 --eval-every 4 --workers 0 --learnrate 0.05 --ckpt-every 1"
)


def test_a_two_process_run_stopped_and_resumed_equals_the_uninterrupted_one(tmp_path):
    reference = torchrun(["-m", "seglab.cli", *DDP_RESUME, "--runs-root", str(tmp_path), "--run-name", "ref"], tmp_path)
    assert reference.returncode == 0, reference.stderr[-4000:]
    run_dir = tmp_path / "stopped"
    args = ["-m", "seglab.cli", *DDP_RESUME, "--runs-root", str(tmp_path), "--run-name", "stopped"]
    with subprocess.Popen(
        torchrun_command(args), cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        deadline = time.monotonic() + 120
        while max((step for step, _ in checkpoint.step_files(run_dir / "checkpoints")), default=0) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-4000:]
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # as a scheduler stops a job: torchrun passes SIGTERM to both ranks
        output = proc.communicate(timeout=120)[0]
    state = checkpoint.read_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert 3 <= state["step"] < 16 and len(state["rng"]) == 2, output[-4000:]
    assert f"stopped by SIGTERM at step {state['step']}" in (run_dir / "runlog").read_text()
    resumed = torchrun(["-m", "seglab.cli", "train", "--resume", str(run_dir)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    def exact(run: Path) -> list[dict]:
        return [
            {
                k: (v.hex() if isinstance(v, float) else v)
                for k, v in r.items()
                if k not in ("images_per_s", "val_per_class_iou")
            }
            for r in records(run)
        ]

    assert exact(run_dir) == exact(tmp_path / "ref")
    assert [r["step"] for r in records(run_dir)] == list(range(1, 17)) and "val_miou" in records(run_dir)[-1]
    ours = checkpoint.read_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    theirs = checkpoint.read_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(ours[k], v) for k, v in theirs.items())
