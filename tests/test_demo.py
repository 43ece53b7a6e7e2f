"""`make demo`'s commands, run as the Makefile writes them, with only the run shortened (CI does not run
the 2-minute demo itself, so this keeps the README's first command true)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from seglab.cli import main

MAKEFILE = Path(__file__).parents[1] / "Makefile"
# Appended flags win over the Makefile's (argparse keeps the last value): a 6-step run, keeps at 2, 4, 6.
SHORTER = {
    "train": shlex.split(
        "--iters 6 --eval-every 3 --ckpt-every 2 --keep 2 --dataset-options size=32 length=16 --workers 0"
    ),
    "test": ["--workers", "0", "--limit", "8", "--bootstrap", "50"],
}


def demo_commands(runs_root: Path) -> list[list[str]]:
    """The `seglab ...` command lines of the demo target, continuation lines joined."""
    text = MAKEFILE.read_text().replace("\\\n", " ")
    recipe = text.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    commands = []
    for line in recipe.splitlines():
        match = re.search(r"\$\(VENV\)/bin/seglab (.*)", line)
        if match:
            args = shlex.split(match.group(1).replace("$(DEMO_RUNS)", str(runs_root)))
            commands.append(args + SHORTER.get(args[0], []))
    return commands


def test_make_demo_commands_train_evaluate_and_list(tmp_path, capsys):
    runs_root = tmp_path / "runs-demo"
    commands = demo_commands(runs_root)
    assert [c[0] for c in commands] == ["train", "test", "runs"]
    for args in commands:
        assert main(args) == 0, args
    report = runs_root / "demo" / "eval" / "val" / "report.html"
    assert report.is_file()
    assert "Checkpoint spread" in report.read_text()
    out = capsys.readouterr().out
    assert "run folder: " + str(runs_root / "demo") in out
    assert re.search(r"^demo\s+efficientnet_lite0\s+fcn8s\s+6\s", out, re.MULTILINE)
