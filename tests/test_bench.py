"""`seglab bench`: latency statistics, complexity numbers, backends that compute the same thing (INT8: its
quantized version), tables."""

from __future__ import annotations

import csv
import shlex
import time

import onnx
import pytest
import torch
from deploy_fixtures import FE, randomize_decoder
from torch.utils.flop_counter import FlopCounterMode

from seglab import build_model
from seglab.bench import (
    backend_runner,
    bench_rows,
    format_markdown,
    measure,
    summarize_times,
    wide_table,
)
from seglab.cli import main as seglab
from seglab.engine.inference import DeployModel
from seglab.errors import ConfigError
from seglab.models.complexity import model_complexity


def test_summarize_times_by_hand():
    lat = summarize_times([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (lat.median_ms, lat.q1_ms, lat.q3_ms, lat.min_ms, lat.max_ms, lat.repeats) == (3, 2, 4, 1, 5, 5)
    assert summarize_times([7.0]).q1_ms == summarize_times([7.0]).q3_ms == 7.0
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        summarize_times([])


def test_measure_counts_warmup_and_times_every_repeat():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.005)

    lat = measure(fn, warmup=2, repeats=3, device=torch.device("cpu"))
    assert len(calls) == 5 and lat.repeats == 3
    assert lat.min_ms >= 5.0  # each timed call sleeps 5 ms; the timer cannot report less
    with pytest.raises(ValueError, match="need repeats >= 1"):
        measure(fn, warmup=0, repeats=0, device=torch.device("cpu"))


def test_complexity_matches_a_real_forward_count():
    model = build_model(FE, "fcn8s", 21).eval()
    measured = model_complexity(model, (64, 96))
    params, gflops = measured["params"], measured["gflops"]
    assert params == sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 64, 96))
    assert gflops == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-9)
    assert next(model.parameters()).device.type == "cpu"  # the meta copy left the model alone


def test_every_backend_computes_the_deployed_model(tmp_path):
    model = randomize_decoder(build_model(FE, "fcn8s", 4))
    images = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = DeployModel(model)(images)
    for backend in ("eager", "channels_last", "onnxruntime"):
        out = backend_runner(model, backend, images, torch.device("cpu"), tmp_path, threads=1)()
        out = torch.as_tensor(out[0] if isinstance(out, list) else out)
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4, msg=backend)
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'"):
        backend_runner(model, "tensorrt", images, torch.device("cpu"), tmp_path, threads=1)


def test_int8_backend_runs_the_quantized_deployed_model(tmp_path):
    model = randomize_decoder(build_model(FE, "fcn8s", 4))
    images = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = DeployModel(model)(images)
    out = torch.as_tensor(backend_runner(model, "onnxruntime-int8", images, torch.device("cpu"), tmp_path, 1)()[0])
    assert out.shape == expected.shape
    assert (out.argmax(1) == expected.argmax(1)).float().mean() > 0.75  # INT8 of the same model, not fp32 itself
    assert not torch.allclose(out, expected, atol=1e-4)
    graph = onnx.load(str(tmp_path / "onnxruntime-int8-int8.onnx")).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 10
    with pytest.raises(ConfigError, match="backend onnxruntime-int8 runs on the CPU"):
        backend_runner(model, "onnxruntime-int8", images, torch.device("cuda"), tmp_path, threads=1)


def test_rows_and_tables():
    rows = bench_rows(
        [(FE, "fcn8s", lambda: build_model(FE, "fcn8s", 21))],
        size=(32, 32),
        batch=2,
        backends=["eager", "channels_last"],
        device=torch.device("cpu"),
        warmup=0,
        repeats=2,
        threads=1,
    )
    assert [r["backend"] for r in rows] == ["eager", "channels_last"]
    assert {r["batch"] for r in rows} == {2} and {r["repeats"] for r in rows} == {2}
    assert all(r["min_ms"] <= r["q1_ms"] <= r["median_ms"] <= r["q3_ms"] <= r["max_ms"] for r in rows)
    fixed = [dict(r, median_ms=10.0, q1_ms=9.0, q3_ms=12.5, params=2_500_000, gflops=1.25) for r in rows]
    table = wide_table(fixed, {(FE, "fcn8s"): {"mIoU": "no run"}})
    assert format_markdown(table).splitlines() == [
        "| basenet | decoder | params (M) | GFLOPs @ 32x32 | eager ms | channels_last ms | mIoU |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| {FE} | fcn8s | 2.50 | 1.2 | 10.0 (9.0-12.5) | 10.0 (9.0-12.5) | no run |",
    ]


def test_bench_cli_writes_csv_and_markdown(tmp_path, capsys):
    code = seglab(
        [
            *["bench", "--basenets"],
            FE,
            *shlex.split(
                "--decoders fcn8s,lraspp --size 32 48 --backends eager --warmup 0 --repeats 1 --threads 1 --csv"
            ),
            str(tmp_path / "b.csv"),
            *["--md"],
            str(tmp_path / "b.md"),
            *["--miou-from"],
            str(tmp_path / "no-runs-here"),
        ]
    )
    assert code == 0
    with open(tmp_path / "b.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["decoder"], r["height"], r["width"], r["threads"]) for r in rows] == [
        ("fcn8s", "32", "48", "1"),
        ("lraspp", "32", "48", "1"),
    ]
    assert int(rows[1]["params"]) == sum(p.numel() for p in build_model(FE, "lraspp", 21).parameters())
    md = (tmp_path / "b.md").read_text()
    assert md.count("no run") == 2 and "1 CPU threads" in md
    assert "eager ms" in capsys.readouterr().out
    assert seglab(["bench", "--basenets", FE, "--backends", "eager,tvm"]) == 1
    assert (
        "seglab bench: error: --backends: backends must be one of eager, channels_last, compile, onnxruntime, "
        "onnxruntime-int8, got 'tvm'"
    ) in capsys.readouterr().err
    assert seglab(["bench", "--basenets", FE, "--backends", "compile", "--warmup", "0"]) == 1
    assert "compile needs --warmup 1 or more" in capsys.readouterr().err
