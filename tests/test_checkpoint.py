"""Checkpoints: a real SIGKILL at each stage of a write, pruning, weights_only refusal, complete state, load_run."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from seglab import config
from seglab.config import TrainConfig
from seglab.engine import checkpoint
from seglab.errors import CheckpointError, PathError
from seglab.models import build_model


def state(step: int, model: torch.nn.Module | None = None, cfg: TrainConfig | None = None) -> dict:
    """A complete checkpoint dict around `model` (a small linear layer by default)."""
    model = model or torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return {
        "format": checkpoint.FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {},
        "scaler": {},
        "step": step,
        "epoch": 0,
        "position": step,
        "rng": [checkpoint.rng_state()],
        "config": config.to_yaml(cfg or TrainConfig()),
        "counters": {"skipped": 0},
        "dataset": {"class_names": ["a", "b", "c"], "ignore_index": 255, "num_train": 10},
    }


def save_in_child(ckpt_dir: Path, step: int, kill_at: str | None) -> int:
    """Fork; the child saves checkpoint `step` and SIGKILLs itself at stage `kill_at`; return its wait status."""
    pid = os.fork()
    if pid == 0:

        def hook(stage: str) -> None:
            if stage == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        try:
            checkpoint.save_checkpoint(state(step), ckpt_dir, step, keep_every=0, hook=hook)
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("stage", ["created", "mid-write", "before-rename", "before-prune"])
def test_kill_at_each_stage_of_a_write_leaves_a_complete_checkpoint(tmp_path, stage):
    ckpt_dir = tmp_path / "checkpoints"
    for step in (1, 2):
        checkpoint.save_checkpoint(state(step), ckpt_dir, step, keep_every=0)
    status = save_in_child(ckpt_dir, 3, stage)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    written = stage == "before-prune"  # the new file was renamed into place before the kill
    temps = list(ckpt_dir.glob(".*"))
    assert bool(temps) == (stage != "before-prune")
    _, loaded = checkpoint.find_resumable(ckpt_dir, report=pytest.fail)
    assert loaded["step"] == (3 if written else 2)
    assert checkpoint.read_checkpoint(ckpt_dir / "last.pt")["step"] == (3 if written else 2)
    assert sorted(p.name for p in ckpt_dir.glob(".*")) == sorted(p.name for p in temps)
    assert checkpoint.remove_temp_files(ckpt_dir) == sorted(p.name for p in temps)
    assert not list(ckpt_dir.glob(".*"))


def test_pruning_keeps_the_newest_two_and_the_keeps(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    for step in range(1, 11):
        checkpoint.save_checkpoint(state(step), ckpt_dir, step, keep_every=4)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        "last.pt",
        "step_0000004.pt",
        "step_0000008.pt",
        "step_0000009.pt",
        "step_0000010.pt",
    ]
    assert os.path.samefile(ckpt_dir / "last.pt", ckpt_dir / "step_0000010.pt")


def test_unreadable_newest_checkpoint_is_reported_and_the_previous_used(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    for step in (1, 2):
        checkpoint.save_checkpoint(state(step), ckpt_dir, step, keep_every=0)
    newest = ckpt_dir / "step_0000002.pt"
    newest.unlink()  # break the hard link before corrupting, as a disk fault would
    newest.write_bytes(b"\x00" * 100)
    reports: list[str] = []
    path, loaded = checkpoint.find_resumable(ckpt_dir, reports.append)
    assert path.name == "step_0000001.pt" and loaded["step"] == 1
    assert len(reports) == 1 and "step_0000002.pt cannot be loaded" in reports[0]


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    checkpoint.save_checkpoint(state(1), ckpt_dir, 1, keep_every=0)
    marker = tmp_path / "pwned"
    evil = state(2)
    evil["counters"] = Payload(marker)
    torch.save(evil, ckpt_dir / "step_0000002.pt")
    with pytest.raises(CheckpointError, match="step_0000002.pt cannot be loaded: UnpicklingError"):
        checkpoint.read_checkpoint(ckpt_dir / "step_0000002.pt")
    reports: list[str] = []
    _, loaded = checkpoint.find_resumable(ckpt_dir, reports.append)
    assert loaded["step"] == 1 and "Weights only load failed" in reports[0]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("remove", "listed"),
    [
        (lambda s: s["rng"][0].pop("numpy"), "rng[0].numpy"),
        (lambda s: s.pop("rng"), "rng (one entry per rank)"),
        (lambda s: (s.pop("optimizer"), s.pop("scaler")), "optimizer, scaler"),
    ],
)
def test_missing_entries_are_errors_listing_them(tmp_path, remove, listed):
    broken = state(1)
    remove(broken)
    torch.save(broken, tmp_path / "step_0000001.pt")
    with pytest.raises(CheckpointError, match="is incomplete; missing entries: ") as err:
        checkpoint.find_resumable(tmp_path, report=pytest.fail)
    assert str(err.value).endswith(listed)


def test_rng_states_round_trip_through_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save({"rng": checkpoint.rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    saved = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"]
    random.seed(9)
    checkpoint.set_rng_state(saved, "rng.pt")
    got = (random.random(), np.random.rand(), np.random.randn(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_corrupt_rng_entry_is_an_error():
    saved = checkpoint.rng_state()
    saved["torch"] = torch.zeros(7, dtype=torch.uint8)
    with pytest.raises(CheckpointError, match="x.pt: RNG state is corrupt"):
        checkpoint.set_rng_state(saved, "x.pt")
    with pytest.raises(CheckpointError, match="x.pt: RNG state lacks python"):
        checkpoint.set_rng_state({k: v for k, v in saved.items() if k != "python"}, "x.pt")


@pytest.mark.parametrize("written_before_plugins", [False, True])
def test_load_run_from_run_folder_and_file(tmp_path, written_before_plugins):
    cfg = TrainConfig(
        basenet="lcnet_050", decoder="fcn8s", num_classes=3, dataset="synthetic", crop=[32, 32], pretrained="none"
    )
    torch.manual_seed(0)
    model = build_model("lcnet_050", "fcn8s", 3)
    with torch.no_grad():  # make the zero-initialized score layers matter
        for p in model.decoder.parameters():
            p.normal_()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "runargs.yaml").write_text(config.to_yaml(cfg))
    saved = state(7, model, cfg)
    if written_before_plugins:  # checkpoints of seglab 0.1.0 have no `plugins` key in their config
        saved["config"] = "".join(
            line + "\n" for line in saved["config"].splitlines() if not line.startswith("plugins")
        )
        assert "plugins" not in saved["config"]
    checkpoint.save_checkpoint(saved, run_dir / "checkpoints", 7, keep_every=0)
    x = torch.randn(1, 3, 32, 32)
    expected = model.eval()(x)
    for path in (run_dir, run_dir / "checkpoints" / "step_0000007.pt"):
        loaded = checkpoint.load_run(path)
        assert not loaded.model.training
        assert torch.allclose(loaded.model(x), expected)
        assert loaded.config.basenet == "lcnet_050" and loaded.config.num_classes == 3
        assert loaded.config.crop == [32, 32] and loaded.config.plugins == []
        assert loaded.step == 7 and loaded.class_names == ["a", "b", "c"] and loaded.ignore_index == 255
        assert loaded.run.path == run_dir
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    (tmp_path / "empty" / "runargs.yaml").write_text("basenet: x\n")
    with pytest.raises(PathError, match="has no checkpoints/last.pt: it stopped before its first checkpoint"):
        checkpoint.load_run(tmp_path / "empty")
    with pytest.raises(PathError, match="is not a run folder: it has no runargs.yaml"):
        checkpoint.load_run(tmp_path)
