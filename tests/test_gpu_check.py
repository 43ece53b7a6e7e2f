"""benchmarks/gpu_check.py's dry run: every step of the GPU check runs on the CPU and is recorded, so the
script is known to work before GPU time is spent (its real run needs a CUDA device)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_passes_every_step_and_writes_its_page(tmp_path):
    out = tmp_path / "gpu-check.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # torch.compile on the CPU costs about a minute; `seglab train --compile` is tested in test_train_run.py.
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--dry-run",
            "--skip",
            "compile",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    record = json.loads(out.with_suffix(".json").read_text())
    failed = {k: v.get("error") for k, v in record["steps"].items() if v["status"] == "fail"}
    assert done.returncode == 0 and not failed, (failed, done.stderr[-3000:])
    steps = record["steps"]
    assert list(steps) == [
        "train_amp",
        "engine_overhead",
        "model_speed",
        "data_pipeline",
        "channels_last_and_compile",
        "modern_models",
        "kill_resume",
        "test_bench_export",
    ]
    assert record["dry_run"] is True and record["environment"]["device"] == "cpu"
    amp = steps["train_amp"]["resnet18_fcn8s"]
    assert {amp[k]["amp"] for k in amp} == {"off", "bf16", "fp16"}
    assert all(amp[k]["images_per_s"] > 0 for k in amp)
    assert steps["kill_resume"]["bit_exact"] is True and steps["kill_resume"]["killed_after_checkpoint"] >= 1
    assert steps["channels_last_and_compile"]["compile"] == "skipped (--skip compile)"
    assert steps["data_pipeline"]["training_step_images_per_s"] > 0
    modern = [steps["modern_models"][k] for k in ("convnext_upernet", "swin_upernet", "vit_segformer")]
    assert [(m["decoder"], m["amp"]) for m in modern] == [
        ("upernet", "bf16"),
        ("upernet", "bf16"),
        ("segformer", "bf16"),
    ]
    assert steps["modern_models"]["workflow"]["accumulate"] == 2 and all(m["images_per_s"] > 0 for m in modern)
    page = out.read_text()
    assert page.startswith("# seglab GPU check (dry run on the CPU: no GPU figures)")
    assert all(f"## {name}: pass" in page for name in steps)
