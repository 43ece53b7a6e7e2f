"""Runs `seglab train` in real child processes that tests can SIGKILL, without paying Python start-up each time.

A server process imports seglab once (and runs no torch op, so forking it is safe); each run is a
`fork` of it executing `seglab.cli.main(argv)`, with stdout/stderr to a log file. Tests signal the
child by pid and collect its exit status through the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

SERVER = r"""
import json, os, sys
import seglab.cli

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
            code = 99
            try:
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
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd, env=env
        )

    def _ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, argv: list[str], log: Path) -> int:
        """Start `seglab <argv>` in a forked child; return its pid."""
        return self._ask(op="start", argv=argv, log=str(log))["pid"]

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

    def run(self, argv: list[str], log: Path, timeout: float = 120.0) -> int:
        """Run `seglab <argv>` to completion; return its exit code."""
        return self.wait(self.start(argv, log), timeout)

    def close(self) -> None:
        """Stop the server."""
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def losses(run_dir: Path) -> list[tuple[int, str]]:
    """Return (step, loss as float.hex) of every record in a run's metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [(r["step"], float(r["loss"]).hex()) for r in records]
