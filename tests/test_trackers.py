"""Experiment trackers (`--logger`): MLflow to a local mlruns/ store, W&B offline, and a one-line error when
an optional tracker is asked for but not installed."""

from __future__ import annotations

import glob
import json
import shlex
import struct
import sys
from pathlib import Path

import pytest

from seglab.cli import main

TINY = shlex.split(
    "train --basenet lcnet_050 --decoder fcn8s --pretrained none --device cpu --dataset-options length=8 size=32 "
    "--crop 32 --batch-size 2 --iters 3 --log-every 1 --eval-every 2 --workers 0"
)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_mlflow_logs_params_metrics_and_the_run_folder(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    store.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "finetune")
    monkeypatch.chdir(tmp_path)  # MLflow keeps artifacts in ./mlruns beside a sqlite store
    assert main([*TINY, "--runs-root", "runs", "--run-name", "ml", "--logger", "tensorboard,mlflow"]) == 0
    run = tmp_path / "runs" / "ml"
    ids = json.loads((run / "trackers.json").read_text())
    client = mlflow.MlflowClient()
    logged = client.get_run(ids["mlflow"])
    assert logged.info.run_name == "ml" and logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "finetune"
    assert json.loads(logged.data.params["learnrate"]) == 0.01 and json.loads(logged.data.params["crop"]) == [32, 32]
    losses = client.get_metric_history(ids["mlflow"], "train/loss")
    assert [(m.step, m.value) for m in losses] == [(r["step"], r["loss"]) for r in records(run)]
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "val/miou_partial")] == [2]
    assert [m.step for m in client.get_metric_history(ids["mlflow"], "val_class_iou/background")] == [2, 3]
    artifacts = {a.path for a in client.list_artifacts(ids["mlflow"])}
    assert artifacts == {"runargs.yaml", "runlog", "metrics.jsonl"}
    assert Path(logged.info.artifact_uri.removeprefix("file://")).is_relative_to(tmp_path / "mlruns")
    assert list(run.glob("events.out.tfevents.*"))  # TensorBoard too
    # a resume continues the same MLflow run
    assert main(["train", "--resume", str(run), "--iters", "4"]) == 0
    assert json.loads((run / "trackers.json").read_text()) == ids
    assert client.get_metric_history(ids["mlflow"], "train/loss")[-1].step == 4


def wandb_records(path: Path) -> list:
    """Return the protobuf records of an offline W&B run file (the LevelDB log format: 32 KiB blocks of
    chunks with a 7-byte header; W&B's own reader is not public)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunk, out = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        chunk += data[pos : pos + length]
        pos += length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            out.append(record)
            chunk = b""
    return out


def test_wandb_offline_logs_config_metrics_images_and_files(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main([*TINY, "--runs-root", str(tmp_path), "--run-name", "wb", "--logger", "wandb"]) == 0
    run = tmp_path / "wb"
    assert not list(run.glob("events.out.tfevents.*"))  # only the trackers asked for
    ids = json.loads((run / "trackers.json").read_text())
    (offline,) = glob.glob(str(run / "wandb" / f"offline-run-*-{ids['wandb']}" / "*.wandb"))
    history, config, artifacts, kinds = {}, {}, [], []
    for record in wandb_records(Path(offline)):
        kind = record.WhichOneof("record_type")
        kinds.append(kind)
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            history[int(items["_step"])] = items
        elif kind in ("run", "config"):  # the config comes with the run record, or in updates after it
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in updates})
        elif kind == "artifact":
            artifacts.append(sorted(entry.path for entry in record.artifact.manifest.contents))
    assert config.get("learnrate") == 0.01, (kinds, config)
    assert config["logger"] == ["wandb"] and config["crop"] == [32, 32]
    assert sorted(history) == [1, 2, 3]
    for r in records(run):
        assert float(history[r["step"]]["train/loss"]) == pytest.approx(r["loss"])
    assert "val/miou_partial" in history[2] and "val/overlay/0/_type" in history[2]
    assert artifacts == [["metrics.jsonl", "runargs.yaml", "runlog"]]


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_a_tracker_that_is_not_installed_is_a_one_line_error(tmp_path, monkeypatch, capsys, tracker):
    monkeypatch.setitem(sys.modules, tracker, None)  # `import mlflow` now raises ImportError
    assert main([*TINY, "--runs-root", str(tmp_path), "--logger", f"tensorboard,{tracker}"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"seglab train: error: --logger {tracker} needs {tracker}: pip install 'seglab[{tracker}]'"
    assert not list(tmp_path.iterdir())  # checked before any run folder is made
    assert main([*TINY, "--runs-root", str(tmp_path), "--run-name", "plain"]) == 0  # the default needs neither
