"""Runs `seglab train` in real child processes that tests can SIGKILL, without paying Python start-up each time.

A server process imports seglab once (and runs no torch op, so forking it is safe); each run is a
`fork` of it executing `seglab.cli.main(argv)`, with stdout/stderr to a log file. Each child leads its own
process group (with its DataLoader workers). Tests signal the child by pid (or its group) and collect its
exit status through the server.

`hook` makes the child signal itself at a chosen moment (`install_hook`), so that a test can stop a run
before its first step, inside a given step, inside a partial or the final evaluation, or at a stage of a
checkpoint write, every time at the same place; the child prints "hook fired: ..." to its log when it does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import seglab.engine.checkpoint
import seglab.engine.setup
import seglab.engine.train

SERVER = r"""
import json, os, sys
import seglab.cli
import train_runner

for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "start":
        pid = os.fork()
        if pid == 0:
            null = os.open(os.devnull, os.O_RDONLY)
            log = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.setpgid(0, 0)
            code = 99
            try:
                if cmd["hook"]:
                    train_runner.install_hook(**cmd["hook"])
                code = seglab.cli.main(cmd["argv"])
            except SystemExit as err:
                code = err.code if isinstance(err.code, int) else 1
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
    elif cmd["op"] == "poll":
        done, status = os.waitpid(cmd["pid"], os.WNOHANG)
        code = os.waitstatus_to_exitcode(status) if done else None
        print(json.dumps({"code": code}), flush=True)
"""


class TrainServer:
    """A fork server for `seglab train` runs (see the module docstring)."""

    def __init__(self, cwd: Path) -> None:
        here = str(Path(__file__).parent)
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=path)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd, env=env
        )

    def _ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, argv: list[str], log: Path, hook: dict | None = None) -> int:
        """Start `seglab <argv>` in a forked child (with `install_hook(**hook)` first); return its pid."""
        return self._ask(op="start", argv=argv, log=str(log), hook=hook)["pid"]

    def poll(self, pid: int) -> int | None:
        """Return the child's exit code (negative: killed by that signal), or None while it runs."""
        return self._ask(op="poll", pid=pid)["code"]

    def wait(self, pid: int, timeout: float = 120.0) -> int:
        """Wait for the child to end; return its exit code."""
        deadline = time.monotonic() + timeout
        while (code := self.poll(pid)) is None:
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                raise TimeoutError(f"seglab train (pid {pid}) still running after {timeout} s")
            time.sleep(0.05)
        return code

    def run(self, argv: list[str], log: Path, timeout: float = 120.0, hook: dict | None = None) -> int:
        """Run `seglab <argv>` to completion; return its exit code."""
        return self.wait(self.start(argv, log, hook), timeout)

    def close(self) -> None:
        """Stop the server."""
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def wait_for(predicate, timeout: float = 60.0) -> None:
    """Poll `predicate` every 10 ms until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def losses(run_dir: Path) -> list[tuple[int, str]]:
    """Return (step, loss as float.hex) of every record in a run's metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [(r["step"], float(r["loss"]).hex()) for r in records]


def install_hook(
    moment: str, signum: int = signal.SIGTERM, call: int = 1, batch: int = 1, stage: str = "", group: bool = False
) -> None:
    """Make this process send itself `signum` (to its whole process group with `group`, DataLoader workers
    included) at a moment of `seglab train`:

    - "build": while the run is being built, before its first step;
    - "step": inside the `call`-th training step of this process (before its all-reduce);
    - "partial_eval" / "final_eval": after `batch` batches of the `call`-th such evaluation;
    - "write": at `stage` of the `call`-th checkpoint write (or the next write that has the stage; see
      `save_checkpoint` for the stages).
    """

    def fire(what: str) -> None:
        print(f"hook fired: {what}", flush=True)
        if group:
            os.killpg(os.getpgid(0), signum)
        else:
            os.kill(os.getpid(), signum)

    calls = {"n": 0, "fired": False}

    def at_stage(at: str) -> None:
        if at == stage and not calls["fired"]:
            calls["fired"] = True
            fire(f"write {call} {at}")

    def counted(original, matches=lambda *a, **k: True):
        def wrapper(*args, **kwargs):
            if matches(*args, **kwargs):
                calls["n"] += 1
                # a write stage may not occur in every write (nothing to prune): armed from then on
                if calls["n"] == call or (moment == "write" and calls["n"] > call and not calls["fired"]):
                    return fire_during(original, args, kwargs)
            return original(*args, **kwargs)

        return wrapper

    def fire_during(original, args, kwargs):
        if moment in ("build", "step"):
            fire(f"{moment} {call}")
            return original(*args, **kwargs)
        if moment == "write":
            return original(*args, **kwargs, hook=at_stage)

        def loader(batches):  # an evaluation's loader, signalling after `batch` batches
            for number, item in enumerate(batches, start=1):
                yield item
                if number == batch:
                    fire(f"{moment} {call} batch {batch}")

        model, batches, *rest = args
        return original(model, loader(batches), *rest, **kwargs)

    if moment == "build":
        seglab.engine.setup.build_network = counted(seglab.engine.setup.build_network)
    elif moment == "step":
        seglab.engine.train.train_step = counted(seglab.engine.train.train_step)
    elif moment in ("partial_eval", "final_eval"):
        final = moment == "final_eval"
        seglab.engine.train.validate = counted(
            seglab.engine.train.validate, lambda *a, desc="", **k: (desc == "val") == final
        )
    elif moment == "write":
        seglab.engine.checkpoint.save_checkpoint = counted(seglab.engine.checkpoint.save_checkpoint)
    else:
        raise ValueError(f"unknown moment {moment!r}")
