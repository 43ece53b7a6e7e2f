"""End-to-end `seglab train` runs (in-process, tiny): run folder, runargs, metrics, TensorBoard, `seglab runs`,
determinism across worker counts and seeds, non-finite loss, and evaluation cut short by a signal."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from train_runner import losses

from seglab import runs
from seglab.cli import main
from seglab.data.base import build_dataset
from seglab.data.loader import AugmentedDataset, Collate
from seglab.engine import checkpoint
from seglab.engine.signals import StopFlag
from seglab.engine.validate import validate
from seglab.errors import ConfigError, PathError
from seglab.models import build_model
from seglab.runs import RunDir, truncate_metrics

TINY = shlex.split(
    "--basenet lcnet_050 --decoder fcn8s --pretrained none --device cpu --dataset-options "
    "length=8 size=32 --crop 32 --batch-size 2 --log-every 1"
)


def train(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    code = main(["train", *TINY, "--runs-root", str(tmp_path), *extra])
    newest = max((p for p in tmp_path.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return code, newest


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    code, path = train(root, "--iters", "6", "--eval-every", "3", "--ckpt-every", "2", "--keep", "4", "--workers", "0")
    assert code == 0
    return path


def test_run_folder_layout(run_dir, capsys):
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_lcnet_050_fcn8s__1", run_dir.name)
    names = sorted(p.name for p in run_dir.iterdir())
    assert names[:1] == ["checkpoints"] and names[2:] == ["metrics.jsonl", "runargs.yaml", "runlog"]
    assert names[1].startswith("events.out.tfevents.")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "last.pt",
        "step_0000004.pt",
        "step_0000006.pt",
    ]
    runlog = (run_dir / "runlog").read_text()
    assert "step 3/6" in runlog and "partial-val mIoU" in runlog and "ETA" in runlog
    assert "final val mIoU" in runlog and "finished 6 steps" in runlog


def test_runargs_is_resolved_and_rerunnable(run_dir, tmp_path):
    runargs = yaml.safe_load((run_dir / "runargs.yaml").read_text())
    assert runargs["dataset"] == "synthetic" and runargs["num_classes"] == 6 and runargs["amp"] == "off"
    assert runargs["crop"] == [32, 32] and runargs["dataset_options"] == {"length": 8, "size": 32}
    code = main(
        ["train", "--config", str(run_dir / "runargs.yaml"), "--runs-root", str(tmp_path), "--run-name", "again"]
    )
    assert code == 0
    assert losses(tmp_path / "again") == losses(run_dir)


def test_metrics_records(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in records] == [0, 0, 0, 0, 1, 1]  # 4 steps per epoch
    for r in records:
        assert {"step", "epoch", "loss", "lr", "images_per_s"} <= set(r)
    assert "val_miou_partial" in records[2] and "val_miou" in records[5]
    assert set(records[5]["val_per_class_iou"]) == {"background", "disk", "square", "triangle", "ring", "cross"}
    assert records[-1]["lr"] == 0.0  # poly decay reaches 0 at the last step


def test_tensorboard_reads_the_run(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {
        "train/loss",
        "train/lr",
        "train/images_per_s",
        "val/miou_partial",
        "val/miou",
        "val_class_iou/background",
    } <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert "val/overlay/0" in tags["images"]
    image = events.Images("val/overlay/0")[-1]
    assert (image.width, image.height) == (3 * 32, 32)  # image | label | prediction


def test_seglab_runs_lists_partial_and_full_miou_apart(run_dir, capsys):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = runs.summarize_run(RunDir(run_dir))
    assert summary["full_last_miou"] == summary["full_best_miou"] == records[5]["val_miou"]
    assert (summary["full_best_step"], summary["full_last_step"]) == (6, 6)
    assert summary["partial_best_miou"] == summary["partial_last_miou"] == records[2]["val_miou_partial"]
    assert summary["partial_best_step"] == 3 and summary["best_checkpoint_step"] is None
    assert main(["runs", "--runs-root", str(run_dir.parent)]) == 0
    out = capsys.readouterr().out
    assert run_dir.name in out and f"{100 * summary['full_last_miou']:.1f} @6" in out
    assert f"{100 * summary['partial_best_miou']:.1f} @3" in out and "partial best" in out


def test_run_names_number_up_and_cannot_escape(tmp_path):
    first = runs.new_run(tmp_path, "a", "b")
    second = runs.new_run(tmp_path, "a", "b")
    assert first.name.endswith("_a_b__1") and second.name.endswith("_a_b__2")
    runs.new_run(tmp_path, "a", "b", run_name="mine")
    with pytest.raises(ConfigError, match="mine already exists; pick another --run-name or use --resume"):
        runs.new_run(tmp_path, "a", "b", run_name="mine")
    for name in ("../x", "/etc", "..", ".hidden"):
        with pytest.raises(ConfigError, match="must be a plain folder name"):
            runs.new_run(tmp_path, "a", "b", run_name=name)


def test_same_seed_any_worker_count_same_losses_other_seed_differs(tmp_path):
    sequences = {}
    for workers, seed in ((0, 0), (2, 0), (0, 1)):
        extra = f"--iters 4 --eval-every 0 --workers {workers} --seed {seed} --run-name w{workers}s{seed}"
        code, path = train(tmp_path, *shlex.split(extra))
        assert code == 0
        sequences[workers, seed] = losses(path)
    assert sequences[0, 0] == sequences[2, 0]
    assert [loss for _, loss in sequences[0, 0]] != [loss for _, loss in sequences[0, 1]]


def test_non_finite_loss_stops_naming_step_and_samples(tmp_path, capsys):
    code, path = train(
        tmp_path,
        *shlex.split("--iters 8 --eval-every 0 --workers 0 --ckpt-every 1 --learnrate 1e12 --run-name diverged"),
    )
    assert code == 1
    err = capsys.readouterr().err
    match = re.search(
        r"step (\d+): the loss is (nan|inf); batch samples: \S+, \S+\. .* last good "
        r"checkpoint is step (\d+)",
        err,
    )
    assert match, err
    assert int(match.group(3)) == int(match.group(1)) - 1
    last = checkpoint.read_checkpoint(path / "checkpoints" / "last.pt")
    assert last["step"] == int(match.group(3))
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_validate_returns_none_when_signalled_midway():
    val = AugmentedDataset(build_dataset("synthetic", None, "val", length=4, size=32), None)
    loader = torch.utils.data.DataLoader(val, batch_size=1, collate_fn=Collate(255))
    model = build_model("lcnet_050", "fcn8s", 6)
    stop = StopFlag()
    cm = validate(model, loader, 255, torch.device("cpu"), stop=stop, show=False)
    assert cm.dtype == torch.int64 and int(cm.sum()) == 4 * 32 * 32

    class SignalAfterTwo(list):
        def __iter__(self):
            for i, batch in enumerate(list.__iter__(self)):
                if i == 2:
                    stop._handle(signal.SIGTERM, None)
                yield batch

    assert validate(model, SignalAfterTwo(loader), 255, torch.device("cpu"), stop=stop, show=False) is None


def test_resume_drops_records_after_the_checkpoint_and_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    assert truncate_metrics(path, 3) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(PathError, match="metrics.jsonl:2: not a JSON record"):
        truncate_metrics(path, 3)


def test_fp16_channels_last_ohem_weighted_adamw_cosine_run(tmp_path):
    code, path = train(
        tmp_path,
        *shlex.split(
            "--iters 3 --eval-every 0 --workers 0 --amp fp16 --channels-last --loss ohem "
            "--ohem-min-kept 100 --class-weights 1 2 2 2 2 2 --optimizer adamw --learnrate 0.001 "
            "--decaylr cosine --warmup 2"
        ),
    )
    assert code == 0
    state = checkpoint.read_checkpoint(path / "checkpoints" / "last.pt")
    assert state["scaler"]["scale"] > 0  # the fp16 gradient scaler is enabled and saved
    assert "exp_avg" in next(iter(state["optimizer"]["state"].values()))
    runargs = yaml.safe_load((path / "runargs.yaml").read_text())
    assert (runargs["amp"], runargs["loss"], runargs["decaylr"]) == ("fp16", "ohem", "cosine")
    lrs = [json.loads(line)["lr"] for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx(
        [
            0.001 * (1e-3 + (1 - 1e-3) / 2) * 0.5 * (1 + math.cos(math.pi / 3)),
            0.001 * 0.5 * (1 + math.cos(2 * math.pi / 3)),
            0.0,
        ]
    )


def folder_dataset(root: Path, bad: str) -> Path:
    """A 2-class VOC-layout set of 64 px PNGs (6 train, 2 val) whose train image `bad` is random bytes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("background\nthing\n")
    ids = [f"im{i}" for i in range(8)]
    for name in ids:
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.png")
        label = Image.fromarray((rng.random((64, 64)) > 0.5).astype(np.uint8), mode="P")
        label.putpalette([0, 0, 0, 128, 0, 0])
        label.save(root / "SegmentationClass" / f"{name}.png")
    (root / "JPEGImages" / f"{bad}.png").write_bytes(rng.bytes(300))
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:6]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[6:]) + "\n")
    return root


def test_bad_sample_stops_the_run_or_is_skipped_and_counted(tmp_path, capsys):
    data = folder_dataset(tmp_path / "data", bad="im3")
    args = [
        *shlex.split(
            "train --basenet lcnet_050 --decoder fcn8s --pretrained none --device cpu --dataset folder --data-root"
        ),
        str(data),
        *shlex.split("--crop 64 --batch-size 2 --iters 6 --workers 0 --log-every 3 --eval-every 0 --runs-root"),
        str(tmp_path / "runs"),
    ]
    assert main([*args, "--run-name", "strict"]) == 1
    assert f"{data / 'JPEGImages' / 'im3.png'}" in capsys.readouterr().err
    assert main([*args, "--run-name", "skip", "--skip-bad-samples"]) == 0
    run_dir = tmp_path / "runs" / "skip"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records] == [1, 2]  # 3 steps per epoch: im3 is drawn once in each
    assert (run_dir / "runlog").read_text().count("skipped " + str(data / "JPEGImages" / "im3.png")) == 2
    assert checkpoint.read_checkpoint(run_dir / "checkpoints" / "last.pt")["counters"]["skipped"] == 2


def test_in_process_resume_writes_into_the_resumed_run(tmp_path, monkeypatch):
    from seglab.engine.train import train as train_fn

    code, path = train(tmp_path / "runs", "--iters", "2", "--eval-every", "0", "--workers", "0", "--ckpt-every", "1")
    assert code == 0
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cfg = dataclasses.replace(checkpoint.load_run(path).config, resume=str(path))
    # `explicit` without a "resume" key: the run folder must still be the resumed one, not the working directory
    assert train_fn(cfg, {}) == 0
    assert list(cwd.iterdir()) == []
    assert "resumed from" in (path / "runlog").read_text()


@pytest.mark.slow
def test_compiled_run_matches_eager_and_saves_plain_weights(tmp_path):
    eager_code, eager = train(tmp_path / "eager", "--iters", "2", "--eval-every", "0", "--workers", "0")
    compiled_code, compiled = train(
        tmp_path / "compiled", "--iters", "2", "--eval-every", "0", "--workers", "0", "--compile"
    )
    assert eager_code == compiled_code == 0
    eager_losses = [r["loss"] for r in map(json.loads, (eager / "metrics.jsonl").read_text().splitlines())]
    compiled_losses = [r["loss"] for r in map(json.loads, (compiled / "metrics.jsonl").read_text().splitlines())]
    assert len(compiled_losses) == len(eager_losses) == 2
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    # the checkpoint holds the plain model's keys (no torch.compile `_orig_mod.` prefix) and loads for inference
    loaded = checkpoint.load_run(compiled)
    assert loaded.config.compile is True
    assert all(not k.startswith("_orig_mod") for k in loaded.model.state_dict())
