"""Exact resume under real kills: SIGKILL at random moments, SIGTERM mid-run and before the first step.

Every run here is a real child process (forked from a server that imported seglab once, see
train_runner.py) training a tiny lcnet_050 x fcn8s on 32 px synthetic images, checkpointing every step.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from train_runner import TrainServer, losses

from seglab.engine import checkpoint

ITERS = 60
ARGS = [
    *shlex.split(
        "train --basenet lcnet_050 --decoder fcn8s --pretrained none --device cpu "
        "--dataset-options length=16 size=32 --crop 32 --batch-size 2 --iters"
    ),
    str(ITERS),
    *shlex.split(
        "--workers 0 --log-every 1 --eval-every 6 --eval-fraction 0.5 --ckpt-every 1 --keep 20 --learnrate 0.05"
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = TrainServer(tmp_path_factory.mktemp("server"))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def reference(server, root) -> Path:
    """An uninterrupted run with the same settings."""
    assert server.run([*ARGS, "--runs-root", str(root), "--run-name", "reference"], root / "reference.log") == 0
    return root / "reference"


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def assert_same_as_reference(run_dir: Path, reference: Path) -> None:
    """Per-step losses (as float.hex) and final weights equal the uninterrupted run's, bit for bit."""
    expected = losses(reference)
    assert [step for step, _ in expected] == list(range(1, ITERS + 1))
    assert losses(run_dir) == expected
    ours = checkpoint.read_checkpoint(run_dir / "checkpoints" / "last.pt")
    theirs = checkpoint.read_checkpoint(reference / "checkpoints" / "last.pt")
    assert ours["step"] == theirs["step"] == ITERS
    for key, value in theirs["model"].items():
        assert torch.equal(ours["model"][key], value), key


def assert_checkpoints_complete(ckpt_dir: Path) -> int:
    """Every checkpoint file present loads; return the newest step (-1: none yet)."""
    files = [p for _, p in checkpoint.step_files(ckpt_dir)]
    if (ckpt_dir / "last.pt").exists():
        files.append(ckpt_dir / "last.pt")
    for path in files:
        checkpoint.read_checkpoint(path)
    if not files:
        return -1
    _, state = checkpoint.find_resumable(ckpt_dir, report=pytest.fail)
    return state["step"]


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_bit_exact(server, root, reference):
    run_dir = root / "killed"
    log = root / "killed.log"
    rng = random.Random(1234)
    pid = server.start([*ARGS, "--runs-root", str(root), "--run-name", "killed"], log)
    wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists())
    kills, newest = 0, -1
    while kills < 20:
        # Leave at least one step per remaining kill: shorter delays (start-up kills) when ahead.
        ahead = ITERS - max(newest, 0) < 3 * (20 - kills)
        time.sleep(rng.uniform(0.0, 0.15 if ahead else 0.5))
        assert server.poll(pid) is None, f"the run ended after only {kills} kills; see {log}"
        os.kill(pid, signal.SIGKILL)
        assert server.wait(pid) == -signal.SIGKILL
        kills += 1
        step = assert_checkpoints_complete(run_dir / "checkpoints")
        assert step >= newest
        newest = step
        pid = server.start(["train", "--resume", str(run_dir)], log)
    assert server.wait(pid) == 0, log.read_text()[-3000:]
    assert not list((run_dir / "checkpoints").glob(".*"))
    assert_same_as_reference(run_dir, reference)


def test_sigterm_mid_run_saves_the_last_finished_step(server, root, reference):
    run_dir = root / "terminated"
    log = root / "terminated.log"
    pid = server.start([*ARGS, "--runs-root", str(root), "--run-name", "terminated"], log)
    wait_for(lambda: len(checkpoint.step_files(run_dir / "checkpoints")) >= 2)
    os.kill(pid, signal.SIGTERM)
    assert server.wait(pid) == 128 + signal.SIGTERM
    state = checkpoint.read_checkpoint(run_dir / "checkpoints" / "last.pt")
    records = losses(run_dir)
    assert 2 <= state["step"] < ITERS
    assert records[-1][0] == state["step"], "the checkpoint is at the last finished (and logged) step"
    assert f"stopped by SIGTERM at step {state['step']}" in (run_dir / "runlog").read_text()
    assert "Traceback" not in log.read_text()
    assert server.run(["train", "--resume", str(run_dir)], log) == 0
    assert_same_as_reference(run_dir, reference)
    assert yaml.safe_load((run_dir / "runargs.yaml").read_text())["resume"] == ""  # re-runs start afresh


def test_sigterm_before_the_first_step(server, root, reference):
    run_dir = root / "early"
    log = root / "early.log"
    pid = server.start([*ARGS, "--runs-root", str(root), "--run-name", "early"], log)
    wait_for(lambda: log.exists() and "run folder:" in log.read_text())
    os.kill(pid, signal.SIGTERM)
    assert server.wait(pid) == 128 + signal.SIGTERM
    state = checkpoint.read_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == len(losses(run_dir))  # whatever step it reached, it is complete and logged
    assert server.run(["train", "--resume", str(run_dir)], log) == 0
    assert_same_as_reference(run_dir, reference)


def test_resume_refuses_changed_settings(server, root, reference):
    log = root / "refused.log"
    code = server.run(["train", "--resume", str(reference), "--crop", "48", "--learnrate", "0.1"], log)
    assert code == 1
    text = log.read_text()
    assert f"cannot resume {reference}" in text
    assert "crop: [32, 32] -> [48, 48]" in text and "learnrate: 0.05 -> 0.1" in text
