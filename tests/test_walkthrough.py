"""The README's "Fine-tune on your own data" walkthrough, run as written (the Python script and every
`seglab` command of the section), with only the runs shortened, so that the walkthrough stays true."""

from __future__ import annotations

import re
import runpy
import shlex
from pathlib import Path

import pytest

from seglab.cli import main
from seglab.engine import checkpoint

README = Path(__file__).parents[1] / "README.md"
# Appended flags win (argparse keeps the last value): 4 source steps, 6 fine-tuning steps, unfrozen after 3.
SHORTER = {
    "source": shlex.split("--iters 4 --batch-size 4 --eval-every 2 --workers 0 --dataset-options size=32 length=8"),
    "mine": shlex.split("--iters 6 --batch-size 4 --unfreeze-at 3 --eval-full-every 2 --workers 0"),
    "test": shlex.split("--workers 0 --bootstrap 50"),
}


def walkthrough() -> tuple[str, list[list[str]]]:
    """Return the section's Python script and its `seglab` command lines (continuations joined)."""
    text = README.read_text().split("<!-- walkthrough: fine-tune -->", 1)[1].split("<!-- /walkthrough -->", 1)[0]
    script = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("seglab "):
                commands.append(shlex.split(line)[1:])
    return script, commands


def shortened(args: list[str]) -> list[str]:
    if args[0] == "train":
        return args + SHORTER[args[args.index("--run-name") + 1]]
    return args + SHORTER.get(args[0], [])


@pytest.mark.slow
def test_the_fine_tuning_walkthrough_runs_on_the_embedded_dataset(tmp_path, monkeypatch, capsys):
    script, commands = walkthrough()
    assert [c[0] for c in commands] == ["train", "data", "train", "test", "runs"]
    monkeypatch.chdir(tmp_path)
    # the script writes 160 + 40 images of 64 px; 32 px and fewer are enough here
    script = script.replace("size=64", "size=32").replace('("train", 160), ("val", 40)', '("train", 12), ("val", 6)')
    (tmp_path / "make_mydata.py").write_text(script)
    runpy.run_path(str(tmp_path / "make_mydata.py"), run_name="__main__")
    assert (tmp_path / "mydata" / "classes.txt").read_text().split() == [
        "background",
        "circle",
        "square",
        "triangle",
        "other",
    ]
    for args in commands:
        if args[0] == "train" and "folder" in args:  # the folder set is 32 px here
            args = [("32" if a == "64" and args[i - 1] == "--crop" else a) for i, a in enumerate(args)]
        assert main(shortened(args)) == 0, args
    runlog = (tmp_path / "runs" / "mine" / "runlog").read_text()
    assert "classes keeping the source's weights: background, disk->circle, square, triangle" in runlog
    assert "classes starting fresh: other" in runlog
    assert "frozen for the first 3 steps" in runlog and "after step 3 the basenet trains too" in runlog
    best = checkpoint.read_checkpoint(tmp_path / "runs" / "mine" / "checkpoints" / "best.pt")
    assert best["best"]["key"] == "val_miou_ema" and "ema" in best
    out = capsys.readouterr().out
    assert "best: evaluating the EMA weights" in out
    assert (tmp_path / "runs" / "mine" / "eval" / "val" / "report.html").is_file()
    assert re.search(r"^mine\s+efficientnet_lite0\s+fcn8s\s+6\s", out, re.MULTILINE)
    assert re.search(rf"^source\s+efficientnet_lite0\s+fcn8s\s+4\s.*@{best['step']}$", out, re.MULTILINE) is None
    assert re.search(rf"^mine\s.*@{best['step']}$", out, re.MULTILINE)
