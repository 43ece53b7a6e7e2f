"""The run lock: one trainer per run folder, named by pid and host; a lock left by a dead trainer is taken over;
filesystems without `flock` fall back to checking the recorded owner. (A second real trainer on a running
run is refused in tests/test_resume.py.)"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from seglab import runs
from seglab.errors import TrainingError


@pytest.fixture
def run(tmp_path) -> runs.RunDir:
    (tmp_path / "runargs.yaml").write_text("basenet: x\n")
    return runs.RunDir(tmp_path)


def owner(pid: int, host: str | None = None) -> str:
    return json.dumps({"pid": pid, "host": host or socket.gethostname(), "since": "Mon Jan  1 00:00:00 2024"})


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_trainer_is_refused_naming_the_owner_until_the_first_releases(run):
    first = runs.lock_run(run)
    assert first.stale == ""
    recorded = json.loads((run.path / runs.LOCK).read_text())
    assert recorded["pid"] == os.getpid() and recorded["host"] == socket.gethostname()
    with pytest.raises(TrainingError) as err:
        runs.lock_run(run)
    assert str(err.value).startswith(
        f"run folder {run.path} is in use by another `seglab train` (pid {os.getpid()} on host {socket.gethostname()}"
    )
    first.release()
    assert not (run.path / runs.LOCK).exists()
    runs.lock_run(run).release()


def test_a_lock_left_by_a_killed_trainer_is_taken_over_and_named(run):
    pid = dead_pid()
    (run.path / runs.LOCK).write_text(owner(pid))  # a file nobody holds a flock on: its owner is gone
    lock = runs.lock_run(run)
    assert lock.stale.startswith(f"pid {pid} on host {socket.gethostname()}")
    assert json.loads((run.path / runs.LOCK).read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.parametrize(
    ("recorded", "refused"),
    [
        ("alive here", "is in use by another `seglab train` (pid"),
        ("other host", "seglab cannot check a process on another host: if none runs there, delete the file"),
        ("dead here", None),
        ("garbage", None),
    ],
)
def test_without_flock_the_recorded_owner_decides(run, monkeypatch, recorded, refused):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runs.fcntl, "flock", no_flock)
    text = {
        "alive here": owner(os.getppid()),
        "other host": owner(os.getpid() + 1, host="elsewhere"),
        "dead here": owner(dead_pid()),
        "garbage": "not json",
    }[recorded]
    (run.path / runs.LOCK).write_text(text)
    if refused:
        with pytest.raises(TrainingError, match=f"is in use by another `seglab train` .*{runs.LOCK}") as err:
            runs.lock_run(run)
        assert refused in str(err.value)
        assert (run.path / runs.LOCK).read_text() == text  # left as it was
    else:
        lock = runs.lock_run(run)
        assert json.loads((run.path / runs.LOCK).read_text())["pid"] == os.getpid()
        lock.release()
