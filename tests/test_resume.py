"""Exact resume under real signals and kills: a signal at each moment of a run (before its first step, inside a
step, inside a partial and the final evaluation, inside a checkpoint write; 0 and 2 DataLoader workers), 20
SIGKILLs (at random moments and staged inside checkpoint writes), a second trainer on a running run, an
unloadable newest checkpoint, and refused resumes (changed settings, an edited runargs.yaml).

Every run here is a real child process (forked from a server that imported seglab once, see train_runner.py)
training a tiny lcnet_050 x fcn8s on 32 px synthetic images, checkpointing every step. A run stopped at any
moment and resumed must give the records (losses as float.hex, partial and final mIoU) and final weights of
the uninterrupted run.
"""

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
import yaml
from train_runner import wait_for

from seglab.engine import checkpoint

TINY = shlex.split(
    "train --basenet lcnet_050 --decoder fcn8s --pretrained none --device cpu --dataset-options length=16 size=32 "
    "--crop 32 --batch-size 2 --log-every 1 --eval-fraction 0.5 --ckpt-every 1 --keep 20 --learnrate 0.05"
)
ITERS = 60  # the 20-kill run
ARGS = [*TINY, "--iters", str(ITERS), "--eval-every", "6", "--workers", "0"]
SHORT = 12  # the signal-moment runs: 8 steps per epoch, partial evaluations at steps 4 and 8
SHORT_ARGS = [*TINY, "--iters", str(SHORT), "--eval-every", "4"]
TERM = 128 + signal.SIGTERM


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def reference(server, root) -> Path:
    """An uninterrupted run with the 20-kill test's settings."""
    assert server.run([*ARGS, "--runs-root", str(root), "--run-name", "reference"], root / "reference.log") == 0
    return root / "reference"


@pytest.fixture(scope="module")
def short_reference(server, root) -> Path:
    """An uninterrupted run with the signal tests' settings."""
    args = [*SHORT_ARGS, "--workers", "0", "--runs-root", str(root), "--run-name", "short"]
    assert server.run(args, root / "short.log") == 0
    return root / "short"


def records(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl records without the timing (throughput), floats as float.hex."""

    def exact(value):
        if isinstance(value, float):
            return value.hex()
        if isinstance(value, dict):
            return {k: exact(v) for k, v in value.items()}
        return value

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: exact(v) for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines if line]


def assert_same_as_reference(run_dir: Path, reference: Path, iters: int) -> None:
    """Records (losses, partial and final mIoU, per class) and final weights equal the uninterrupted run's."""
    expected = records(reference)
    assert [r["step"] for r in expected] == list(range(1, iters + 1))
    assert "val_miou" in expected[-1]
    assert records(run_dir) == expected
    ours = checkpoint.read_checkpoint(run_dir / "checkpoints" / "last.pt")
    theirs = checkpoint.read_checkpoint(reference / "checkpoints" / "last.pt")
    assert ours["step"] == theirs["step"] == iters and ours["pending"] == theirs["pending"] == {}
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
    return checkpoint.find_resumable(ckpt_dir, report=pytest.fail).state["step"]


# moment -> (hook, the step the checkpoint is at, the evaluation left pending there)
MOMENTS = {
    "before the first step": ({"moment": "build"}, 0, ""),
    "inside step 3": ({"moment": "step", "call": 3}, 3, ""),
    "inside the last step": ({"moment": "step", "call": SHORT}, SHORT, "final"),
    "inside the partial evaluation at step 4": ({"moment": "partial_eval", "call": 1, "batch": 2}, 4, "partial"),
    "inside the final evaluation": ({"moment": "final_eval", "call": 1, "batch": 3}, SHORT, "final"),
    "inside the checkpoint write of step 5": ({"moment": "write", "call": 5, "stage": "mid-write"}, 5, ""),
    "as last.pt is re-linked at step 5": ({"moment": "write", "call": 5, "stage": "last-linked"}, 5, ""),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("moment", "workers"),
    # a checkpoint write happens in the main process alone: it is signalled with 0 workers only
    [(m, w) for m, (hook, _, _) in MOMENTS.items() for w in ((0,) if hook["moment"] == "write" else (0, 2))],
)
def test_a_signal_at_any_moment_exits_128_plus_n_and_the_resume_finishes_the_rest(
    server, root, short_reference, moment, workers
):
    hook, step, pending = MOMENTS[moment]
    # with workers, the signal goes to the whole process group (as Ctrl-C and most schedulers send it)
    hook = {**hook, "group": bool(workers)}
    name = f"{hook['moment']}{hook.get('call', '')}{hook.get('stage', '')}-w{workers}"
    run_dir, log = root / name, root / f"{name}.log"
    args = [*SHORT_ARGS, "--workers", str(workers), "--runs-root", str(root), "--run-name", name]
    assert server.run(args, log, hook=hook) == TERM, log.read_text()[-3000:]
    text = log.read_text()
    assert "hook fired" in text and "Traceback" not in text
    state = checkpoint.read_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == step
    assert state["pending"].get("eval", "") == pending
    # an evaluation cut short leaves its step's record for the resume: nothing is logged twice or lost
    assert [r["step"] for r in records(run_dir)] == list(range(1, step + (0 if pending else 1)))
    assert f"stopped by SIGTERM at step {step}" in (run_dir / "runlog").read_text()
    assert not list((run_dir / "checkpoints").glob(".*"))  # the resume would remove temp files; none are left
    assert server.run(["train", "--resume", str(run_dir)], log) == 0, log.read_text()[-3000:]
    runlog = (run_dir / "runlog").read_text()
    assert (f"step {step}: running the {pending} evaluation a signal cut short" in runlog) == bool(pending)
    assert_same_as_reference(run_dir, short_reference, SHORT)
    assert not (run_dir / "train.lock").exists()


@pytest.mark.slow
def test_sigint_exits_130_and_a_signal_after_the_last_work_exits_0(server, root, short_reference):
    run_dir, log = root / "sigint", root / "sigint.log"
    args = [*SHORT_ARGS, "--workers", "0", "--runs-root", str(root), "--run-name", "sigint"]
    assert server.run(args, log, hook={"moment": "step", "call": 2, "signum": signal.SIGINT}) == 128 + signal.SIGINT
    assert "stopped by SIGINT at step 2" in (run_dir / "runlog").read_text()
    # a signal during the write of the last checkpoint, after the final evaluation: all the work is done
    hook = {"moment": "write", "call": SHORT - 2, "stage": "mid-write"}
    assert server.run(["train", "--resume", str(run_dir)], log, hook=hook) == 0
    assert f"finished {SHORT} steps" in (run_dir / "runlog").read_text()
    assert_same_as_reference(run_dir, short_reference, SHORT)


@pytest.mark.slow
def test_sigkill_at_random_moments_and_inside_writes_resumes_bit_exact(server, root, reference):
    run_dir = root / "killed"
    log = root / "killed.log"
    rng = random.Random(1234)
    stages = ["created", "mid-write", "before-rename", "last-linked", "before-prune", "mid-prune"]
    pid = server.start([*ARGS, "--runs-root", str(root), "--run-name", "killed"], log)
    wait_for(lambda: (run_dir / "checkpoints" / "last.pt").exists())
    # a second trainer on the running run is refused, naming the first one
    assert server.run(["train", "--resume", str(run_dir)], root / "second.log") == 1
    assert f"is in use by another `seglab train` (pid {pid} on host" in (root / "second.log").read_text()
    kills, newest, staged = 0, -1, 0
    while kills < 20:
        if kills % 2:  # this process SIGKILLs itself at a stage of its first or second checkpoint write
            assert server.wait(pid) == -signal.SIGKILL, f"the staged kill did not happen; see {log}"
            staged += 1
        else:
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
        hook = None
        if kills % 2:
            stage = stages[(kills // 2) % len(stages)]
            hook = {"moment": "write", "call": rng.randint(1, 2), "stage": stage, "signum": signal.SIGKILL}
        pid = server.start(["train", "--resume", str(run_dir)], log, hook=hook)
    assert server.wait(pid) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert text.count("hook fired: write") == staged == 10
    assert all(f" {stage}\n" in text for stage in stages)
    assert not list((run_dir / "checkpoints").glob(".*")) and not list((run_dir / "checkpoints").glob("*.bad*"))
    assert "took over train.lock from a trainer that is gone" in (run_dir / "runlog").read_text()
    assert not (run_dir / "train.lock").exists()
    assert_same_as_reference(run_dir, reference, ITERS)


@pytest.mark.slow
def test_an_unloadable_newest_checkpoint_is_set_aside_and_the_run_resumes_exactly(server, root, short_reference):
    run_dir, log = root / "torn", root / "torn.log"
    args = [*SHORT_ARGS, "--workers", "0", "--runs-root", str(root), "--run-name", "torn"]
    assert server.run(args, log, hook={"moment": "step", "call": 7}) == TERM
    newest = run_dir / "checkpoints" / "step_0000007.pt"
    with open(newest, "r+b") as f:  # torn in place: last.pt, the same file, is torn too
        f.truncate(newest.stat().st_size // 3)
    assert server.run(["train", "--resume", str(run_dir)], log) == 0
    runlog = (run_dir / "runlog").read_text()
    assert f"checkpoint {newest} cannot be loaded" in log.read_text()  # on stderr
    assert "set aside the unloadable checkpoint step_0000007.pt as step_0000007.pt.bad" in runlog
    assert "last.pt now points at step_0000006.pt" in runlog and "resumed from" in runlog
    assert (run_dir / "checkpoints" / "step_0000007.pt.bad").is_file()
    assert [s for s, _ in checkpoint.step_files(run_dir / "checkpoints")] == [SHORT, SHORT - 1]  # .bad not counted
    assert_same_as_reference(run_dir, short_reference, SHORT)


def test_resume_refuses_changed_settings(server, root, short_reference):
    log = root / "refused.log"
    code = server.run(["train", "--resume", str(short_reference), "--crop", "48", "--learnrate", "0.1"], log)
    assert code == 1
    text = log.read_text()
    assert f"cannot resume {short_reference}" in text
    assert "crop: [32, 32] -> [48, 48]" in text and "learnrate: 0.05 -> 0.1" in text


def test_resume_refuses_an_edited_runargs_and_says_how_to_apply_it(server, short_reference, tmp_path):
    run_dir = tmp_path / "edited"
    shutil.copytree(short_reference, run_dir)
    runargs = run_dir / "runargs.yaml"
    edited = {**yaml.safe_load(runargs.read_text()), "learnrate": 0.1, "eval_every": 3}
    runargs.write_text(yaml.safe_dump(edited, sort_keys=False))
    log = tmp_path / "edited.log"
    assert server.run(["train", "--resume", str(run_dir)], log) == 1
    lines = [line for line in log.read_text().splitlines() if "error" in line]
    assert len(lines) == 1, log.read_text()
    message = lines[0]
    assert f"cannot resume {run_dir}: its runargs.yaml was edited" in message
    assert "learnrate: 0.05 in the checkpoint, 0.1 in runargs.yaml" in message
    assert "eval_every: 4 in the checkpoint, 3 in runargs.yaml" in message
    assert f"pass it as flags: seglab train --resume {run_dir} --eval-every 3" in message
    assert f"learnrate cannot change on resume: start a new run with `seglab train --config {runargs}" in message
    assert yaml.safe_load(runargs.read_text()) == edited  # not overwritten
    # the flag applies the allowed edit; the other one is undone by hand: the resume goes on
    runargs.write_text(yaml.safe_dump({**edited, "learnrate": 0.05}, sort_keys=False))
    assert server.run(["train", "--resume", str(run_dir), "--eval-every", "3"], log) == 0
    # the checkpoint now records the new setting, so a plain resume agrees with runargs.yaml again
    assert checkpoint.load_run(run_dir).config.eval_every == 3
    assert server.run(["train", "--resume", str(run_dir)], log) == 0
