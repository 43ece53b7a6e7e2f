"""Exact resume with every training-workflow flag on (init-from, frozen basenet then unfrozen, differential
learning rates, accumulation, clipping, EMA, best checkpoint), extending runs with a larger --iters, and
the same workflow under torchrun. Runs are real child processes (see train_runner.py)."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from test_ddp import torchrun
from train_runner import losses, wait_for

from seglab.cli import main
from seglab.engine import checkpoint
from seglab.engine.schedule import LRFactor

ITERS = 12
TINY = shlex.split(
    "train --pretrained none --device cpu --dataset-options length=16 size=32 --crop 32 --workers 0 --log-every 1"
)
WORKFLOW = shlex.split(
    "--freeze-basenet --unfreeze-at 5 --difflr 5 --batch-size 4 --accumulate 2 --clip-grad 0.5 --ema 0.9 "
    "--eval-every 3 --eval-fraction 0.5 --eval-full-every 4 --keep-best --ckpt-every 1 --keep 20 --learnrate 0.05"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def args(server, root) -> list[str]:
    """The workflow's command line, fine-tuning a 2-step source run."""
    source = [*TINY, "--basenet", "lcnet_050", "--decoder", "fcn8s", "--batch-size", "2", "--iters", "2"]
    assert server.run([*source, "--runs-root", str(root), "--run-name", "source"], root / "source.log") == 0
    return [*TINY, "--init-from", str(root / "source"), *WORKFLOW, "--iters", str(ITERS), "--runs-root", str(root)]


@pytest.fixture(scope="module")
def reference(server, root, args) -> Path:
    assert server.run([*args, "--run-name", "reference"], root / "reference.log") == 0, (
        root / "reference.log"
    ).read_text()
    return root / "reference"


def assert_same_state(ours: Path, theirs: Path) -> None:
    """Model, EMA weights, optimizer and best-checkpoint record of two checkpoint files are equal bit for bit."""
    a, b = checkpoint.read_checkpoint(ours), checkpoint.read_checkpoint(theirs)
    assert a["step"] == b["step"] and a.get("best") == b.get("best")
    for part in ("model", "ema"):
        tensors = b[part] if part == "model" else b[part]["model"]
        mine = a[part] if part == "model" else a[part]["model"]
        for key, value in tensors.items():
            assert torch.equal(mine[key], value), (part, key)
    assert a["ema"]["updates"] == b["ema"]["updates"]


@pytest.mark.slow
def test_sigkill_with_every_workflow_flag_resumes_bit_exact(server, root, args, reference):
    run_dir, log = root / "killed", root / "killed.log"
    rng = random.Random(7)
    pid = server.start([*args, "--run-name", "killed"], log)
    wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists())
    for _ in range(5):
        time.sleep(rng.uniform(0.0, 0.6))
        if server.poll(pid) is not None:
            break
        os.kill(pid, signal.SIGKILL)
        assert server.wait(pid) == -signal.SIGKILL
        pid = server.start(["train", "--resume", str(run_dir)], log)
    assert server.wait(pid) == 0, log.read_text()[-3000:]
    assert losses(run_dir) == losses(reference)
    assert [step for step, _ in losses(run_dir)] == list(range(1, ITERS + 1))
    assert_same_state(run_dir / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")
    assert_same_state(run_dir / "checkpoints" / "best.pt", reference / "checkpoints" / "best.pt")
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert {"grad_norm", "lr_decoder", "val_miou_ema", "val_miou_partial_ema"} <= {k for r in records for k in r}


@pytest.mark.slow
def test_extending_an_interrupted_or_a_finished_run(server, root, args, reference):
    # interrupted at some step of 12, then continued for 18: steps 1-12 are the original's, bit for bit
    run_dir, log = root / "interrupted", root / "interrupted.log"
    pid = server.start([*args, "--run-name", "interrupted"], log)
    last = run_dir / "checkpoints" / "last.pt"
    wait_for(lambda: last.exists() and checkpoint.read_checkpoint(last)["step"] >= 3)
    os.kill(pid, signal.SIGTERM)
    assert server.wait(pid) == 128 + signal.SIGTERM
    assert checkpoint.read_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] < ITERS
    assert server.run(["train", "--resume", str(run_dir), "--iters", "18"], log) == 0, log.read_text()[-3000:]
    extended = losses(run_dir)
    assert extended[:ITERS] == losses(reference) and [s for s, _ in extended] == list(range(1, 19))
    # a finished run, extended the same way, continues exactly like the interrupted one
    finished = root / "finished"
    shutil.copytree(reference, finished)
    assert server.run(["train", "--resume", str(finished), "--iters", "18"], log) == 0, log.read_text()[-3000:]
    assert losses(finished) == extended
    # the learning rate: the old schedule up to step 12, then the decay again from the peak over steps 13-18
    records = [json.loads(line) for line in (finished / "metrics.jsonl").read_text().splitlines()]
    before, after = LRFactor("poly", ITERS), LRFactor("poly", 18, restarts=[ITERS])
    expected = [0.05 * (before if r["step"] <= ITERS else after)(r["step"]) for r in records]
    assert [r["lr"] for r in records] == pytest.approx(expected, rel=1e-12)
    assert records[ITERS - 1]["lr"] == 0.0 and records[ITERS]["lr"] == pytest.approx(0.05 * (5 / 6) ** 0.9)
    state = checkpoint.read_checkpoint(finished / "checkpoints" / "last.pt")
    assert state["scheduler"]["lr_lambdas"][0]["restarts"] == [ITERS] and state["step"] == 18
    assert "extended from 12 to 18 steps" in (finished / "runlog").read_text()
    # shorter is refused
    assert server.run(["train", "--resume", str(finished), "--iters", "15"], root / "short.log") == 1
    assert "cannot resume for 15 steps: the run was started for 18" in (root / "short.log").read_text()


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_the_workflow_on_two_processes_matches_one(tmp_path, root, args, reference):
    """Under DDP with gloo: accumulation (no_sync passes), unfreezing (DDP built anew) and clipping give the
    losses of one process holding the whole batch. BatchNorm is frozen so that both compare exactly."""
    command = [*args, "--freeze-bn", "--iters", "8"]
    command[command.index("--runs-root") + 1] = str(tmp_path / "ddp")
    result = torchrun(["-m", "seglab.cli", *command, "--run-name", "r"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    command[command.index("--runs-root") + 1] = str(tmp_path / "one")
    assert main([*command, "--run-name", "r"]) == 0
    two, one = losses(tmp_path / "ddp" / "r"), losses(tmp_path / "one" / "r")
    assert [s for s, _ in two] == [s for s, _ in one] == list(range(1, 9))
    for (_, a), (_, b) in zip(two, one, strict=True):
        assert float.fromhex(a) == pytest.approx(float.fromhex(b), rel=1e-5)
    assert "after step 5 the basenet trains too" in (tmp_path / "ddp" / "r" / "runlog").read_text()
