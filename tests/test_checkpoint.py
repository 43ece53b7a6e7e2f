"""Checkpoints: a real SIGKILL at each stage of a write, pruning, the healing fallback (only for files that do
not load), weights_only refusal, validation of every entry, CPU-written RNG states on a GPU machine, load_run."""

from __future__ import annotations

import errno
import os
import random
import signal
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from seglab import config
from seglab.config import TrainConfig
from seglab.engine import checkpoint
from seglab.errors import CheckpointError, PathError, UnloadableCheckpoint
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


# stage -> (newest complete step, step last.pt holds, a temp file is left, step files left)
STAGES = {
    "created": (2, 2, True, [1, 2]),
    "mid-write": (2, 2, True, [1, 2]),
    "before-rename": (2, 2, True, [1, 2]),
    "last-linked": (3, 2, True, [1, 2, 3]),  # the new file is in place; last.pt still the old one
    "before-prune": (3, 3, False, [1, 2, 3]),
    "mid-prune": (3, 3, False, [2, 3]),
}


@pytest.mark.parametrize("stage", STAGES)
def test_kill_at_each_stage_of_a_write_leaves_a_complete_checkpoint(tmp_path, stage):
    newest, last_step, temp_left, steps_left = STAGES[stage]
    ckpt_dir = tmp_path / "checkpoints"
    for step in (1, 2):
        checkpoint.save_checkpoint(state(step), ckpt_dir, step, keep_every=0)
    status = save_in_child(ckpt_dir, 3, stage)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    temps = list(ckpt_dir.glob(".*"))
    assert bool(temps) == temp_left
    assert [s for s, _ in reversed(checkpoint.step_files(ckpt_dir))] == steps_left
    found = checkpoint.find_resumable(ckpt_dir, report=pytest.fail)
    assert found.state["step"] == newest and found.unloadable == []
    assert checkpoint.read_checkpoint(ckpt_dir / "last.pt")["step"] == last_step
    notes = checkpoint.heal(ckpt_dir, found.path, found.unloadable)  # what a resume does once it holds the lock
    assert bool(notes) == (last_step != newest)
    assert os.path.samefile(ckpt_dir / "last.pt", found.path)
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


def names(ckpt_dir: Path) -> list[str]:
    return sorted(p.name for p in ckpt_dir.iterdir())


@pytest.mark.parametrize("damage", ["torn", "zeros", "flipped tensor byte"])
def test_unloadable_newest_checkpoint_is_set_aside_and_never_counted(tmp_path, damage):
    ckpt_dir = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        checkpoint.save_checkpoint(state(step), ckpt_dir, step, keep_every=0)
    newest = ckpt_dir / "step_0000003.pt"
    data = bytearray(newest.read_bytes())
    if damage == "torn":
        data = data[: len(data) // 2]
    elif damage == "zeros":
        data = bytearray(len(data))
    else:  # bit rot inside a tensor: torch.load alone would return wrong weights without a word
        with zipfile.ZipFile(newest) as archive:
            info = next(i for i in archive.infolist() if "/data/" in i.filename)
        start = info.header_offset  # the member's data follows its local header (name and extra field)
        name_length, extra_length = struct.unpack("<HH", data[start + 26 : start + 30])
        data[start + 30 + name_length + extra_length + 2] ^= 0xFF
    with open(newest, "r+b") as f:  # in place, as a disk fault would: last.pt (the same file) is damaged too
        f.write(data)
        f.truncate()
    with pytest.raises(UnloadableCheckpoint, match="last.pt cannot be loaded"):
        checkpoint.read_checkpoint(ckpt_dir / "last.pt")
    reports: list[str] = []
    found = checkpoint.find_resumable(ckpt_dir, reports.append)
    assert found.path.name == "step_0000002.pt" and found.state["step"] == 2
    assert found.unloadable == [newest]
    assert len(reports) == 1 and "step_0000003.pt cannot be loaded" in reports[0]
    assert names(ckpt_dir) == ["last.pt", "step_0000002.pt", "step_0000003.pt"]  # finding changes nothing
    notes = checkpoint.heal(ckpt_dir, found.path, found.unloadable)
    assert notes == [
        "set aside the unloadable checkpoint step_0000003.pt as step_0000003.pt.bad",
        "last.pt now points at step_0000002.pt, the newest checkpoint that loads",
    ]
    assert os.path.samefile(ckpt_dir / "last.pt", found.path)
    for step in (3, 4):  # the resumed run goes on: the .bad file is kept and never counted by pruning
        checkpoint.save_checkpoint(state(step), ckpt_dir, step, keep_every=0)
    assert names(ckpt_dir) == ["last.pt", "step_0000003.pt", "step_0000003.pt.bad", "step_0000004.pt"]
    assert checkpoint.find_resumable(ckpt_dir, pytest.fail).state["step"] == 4
    for step in (4, 3):  # new files, not in place: last.pt keeps step 4 as a separate copy
        (ckpt_dir / f"step_000000{step}.pt").unlink()
        (ckpt_dir / f"step_000000{step}.pt").write_bytes(b"torn")
    found = checkpoint.find_resumable(ckpt_dir, reports.append)
    assert found.path.name == "last.pt" and found.state["step"] == 4
    checkpoint.heal(ckpt_dir, found.path, found.unloadable)  # a second bad file of step 3 gets its own name
    assert names(ckpt_dir) == ["last.pt", "step_0000003.pt.bad", "step_0000003.pt.bad-2", "step_0000004.pt.bad"]


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (OSError(errno.EIO, "Input/output error"), "cannot be read: Input/output error (an I/O error"),
        (PermissionError(errno.EACCES, "Permission denied"), "cannot be read: Permission denied"),
        (MemoryError(), "does not fit in the free memory"),
    ],
)
def test_io_errors_and_memory_errors_stop_without_falling_back(tmp_path, monkeypatch, error, message):
    ckpt_dir = tmp_path / "checkpoints"
    for step in (1, 2):
        checkpoint.save_checkpoint(state(step), ckpt_dir, step, keep_every=0)
    before = names(ckpt_dir)

    def failing_load(path, **kwargs):
        raise error

    monkeypatch.setattr(checkpoint.torch, "load", failing_load)
    with pytest.raises(CheckpointError, match="step_0000002.pt") as err:
        checkpoint.find_resumable(ckpt_dir, report=pytest.fail)  # no fallback to step 1: nothing reported
    assert message in str(err.value) and not isinstance(err.value, UnloadableCheckpoint)
    assert "no older checkpoint is used instead" in str(err.value)
    assert names(ckpt_dir) == before


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
    found = checkpoint.find_resumable(ckpt_dir, reports.append)
    assert found.state["step"] == 1 and "Weights only load failed" in reports[0]
    checkpoint.heal(ckpt_dir, found.path, found.unloadable)
    assert (ckpt_dir / "step_0000002.pt.bad").is_file()
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


def set_entry(keys: str, value):
    """Return a change of the checkpoint entry at dotted path `keys` (an int selects a list item)."""

    def change(s: dict) -> None:
        *parents, last = [int(k) if k.isdigit() else k for k in keys.split(".")]
        for key in parents:
            s = s[key]
        s[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (set_entry("step", "3"), "step must be a non-negative int, got '3'"),
        (set_entry("epoch", -1), "epoch must be a non-negative int, got -1"),
        (set_entry("model.weight", [1.0, 2.0]), "model must be a state dict of named tensors"),
        (set_entry("optimizer.param_groups", None), "optimizer must be an optimizer state dict"),
        (set_entry("scheduler", [1]), "scheduler must be a state dict"),
        (set_entry("rng.0.python", [3, [1, 2], None]), "rng[0].python must be a Python random.getstate() tuple"),
        (set_entry("rng.0.numpy.key", torch.zeros(624, dtype=torch.int32)), "rng[0].numpy must be an MT19937"),
        (set_entry("rng.0.torch", torch.zeros(3)), "rng[0].torch must be a uint8 tensor"),
        (set_entry("rng.0.cuda", "none"), "rng[0].cuda must be a list of uint8 tensors"),
        (set_entry("counters.skipped", "many"), "counters must map names to numbers"),
        (set_entry("dataset.class_names", "a b c"), "dataset.class_names must be a non-empty list of names"),
        (set_entry("dataset.ignore_index", 300), "dataset.ignore_index must be an int in [0, 255]"),
        (set_entry("dataset.num_train", -4), "dataset.num_train must be a non-negative int"),
        (set_entry("pending", {"eval": "half"}), "pending must be {} or an evaluation"),
        (set_entry("config", "- a list\n"), "config: not a mapping of TrainConfig keys"),
        (set_entry("config", "batch_size: 0\n"), "batch_size must be at least 1, got 0"),
        (set_entry("config", "num_classes: 5\n"), "dataset.class_names lists 3 classes, its config has num_classes 5"),
        (set_entry("format", 2), "has format 2, this seglab reads 1"),
    ],
)
def test_every_entry_is_validated_on_load(tmp_path, change, named):
    broken = state(1)
    change(broken)
    path = tmp_path / "x.pt"
    torch.save(broken, path)
    with pytest.raises(CheckpointError) as err:
        checkpoint.read_checkpoint(path)
    assert named in str(err.value) and str(path) in str(err.value)
    assert not isinstance(err.value, UnloadableCheckpoint)  # no crash damage: a resume stops, not falls back
    torch.save(state(1), tmp_path / "step_0000001.pt")
    path.rename(tmp_path / "step_0000002.pt")
    with pytest.raises(CheckpointError) as err:
        checkpoint.find_resumable(tmp_path, report=pytest.fail)
    assert named in str(err.value)


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


class FakeCuda:
    """Stands in for torch.cuda on a machine with `count` GPUs, recording the generator states set."""

    def __init__(self, count: int) -> None:
        self.count, self.set = count, {}

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: self.set.__setitem__(device, s))
        monkeypatch.setattr(
            torch.cuda,
            "get_rng_state_all",
            lambda: [torch.full((16,), d, dtype=torch.uint8) for d in range(self.count)],
        )


@pytest.mark.parametrize(("written_with", "resumed_with"), [(0, 1), (0, 2), (2, 1), (1, 2), (2, 2)])
def test_rng_states_of_another_gpu_count_resume(monkeypatch, written_with, resumed_with):
    saved = checkpoint.rng_state()  # this machine has no GPU: no CUDA states
    assert saved["cuda"] == []
    saved["cuda"] = [torch.full((16,), 10 + d, dtype=torch.uint8) for d in range(written_with)]
    cuda = FakeCuda(resumed_with)
    cuda.install(monkeypatch)
    note = checkpoint.set_rng_state(saved, "ckpt.pt")
    restored = min(written_with, resumed_with)
    assert sorted(cuda.set) == list(range(restored))
    for device, generator in cuda.set.items():
        assert torch.equal(generator, saved["cuda"][device])
    if written_with == resumed_with:
        assert note == ""
    else:
        assert note == (
            f"ckpt.pt holds {written_with} CUDA RNG states, this machine has {resumed_with} GPUs: restored "
            f"{restored}, the others keep their seeded state"
        )
    assert len(checkpoint.rng_state()["cuda"]) == resumed_with  # and a GPU machine saves its own


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
    wrong = state(7, build_model("lcnet_050", "fcn8s", 3), cfg)
    wrong["model"] = {k: v for k, v in list(wrong["model"].items())[1:]}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="wrong.pt: its weights do not fit the model its config describes"):
        checkpoint.load_run(tmp_path / "wrong.pt")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    (tmp_path / "empty" / "runargs.yaml").write_text("basenet: x\n")
    with pytest.raises(PathError, match="has no checkpoints/last.pt: it stopped before its first checkpoint"):
        checkpoint.load_run(tmp_path / "empty")
    with pytest.raises(PathError, match="is not a run folder: it has no runargs.yaml"):
        checkpoint.load_run(tmp_path)
