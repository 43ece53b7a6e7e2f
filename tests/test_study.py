"""`seglab study`: a 2 basenets x 1 decoder x 2 seeds study end to end on the embedded dataset (in-process, in
parallel workers, through submitit's local executor, with DDP jobs), resuming and retrying only what is missing;
its YAML checks and grid; and the estimators (variance components, Spearman intervals) on known numbers."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import spearmanr

from seglab import metrics
from seglab.bench import result_columns
from seglab.cli import main as seglab
from seglab.config import StudyConfig, check_study
from seglab.engine.checkpoint import load_run
from seglab.errors import ConfigError
from seglab.metrics.bootstrap import resample_weights
from seglab.models import BASENETS, SEED_BASENETS, basenet_spec, build_basenet
from seglab.runs import COUNTS, EvalDir, RunDir
from seglab.study import read_study
from seglab.study.jobs import result_row, torchrun_command
from seglab.study.launch import submitit_parameters
from seglab.study.plan import expand_cells, plan
from seglab.study.predictors import answer, bootstrap_spearman, correlation_groups, spearman
from seglab.study.probe import ProbeModel
from seglab.study.variance import RunScores, decompose, detectable, nested_components, variance_study

TINY = {
    "basenets": ["resnet10t", "lcnet_050"],
    "decoders": ["fcn8s"],
    "seeds": [0, 1],
    "last_k": 2,
    "train": {
        "dataset": "synthetic",
        "dataset_options": {"length": 4, "size": 32},
        "iters": 2,
        "batch_size": 2,
        "crop": [32, 32],
        "pretrained": "none",
        "optimizer": "adamw",  # a large first step, so that 2 steps give runs that differ
        "learnrate": 0.05,
        "workers": 0,
        "eval_every": 0,
        "ckpt_every": 1,
        "keep": 1,
        "device": "cpu",
    },
    "test": {"bootstrap": 50, "workers": 0, "device": "cpu", "corruptions": ["gaussian_noise"], "severities": [1, 5]},
    "bench": {"size": 32, "backends": ["eager"], "warmup": 0, "repeats": 2, "threads": 1},
    "probe": {"steps": 2, "batch_size": 2},
}
SECTIONS = ("Results by cell", "Variance decomposition", "Robustness under corruptions", "What predicts a good basenet")


def write_study(tmp_path, content: dict, name: str = "tiny.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def check_report(out) -> None:
    """The report has every section, its figures inlined, and its tables agree with results.csv."""
    html = (out / "report.html").read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in html, section
    assert html.count('src="data:image/png;base64,') == 4  # cells, variance, robustness, predictors
    for figure in ("cells.png", "variance.png", "robustness.png", "predictors.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_study_end_to_end_resumes_and_refuses_an_edited_yaml(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_study(tmp_path, TINY)
    out = tmp_path / "study"
    assert seglab(["study", str(config), "--out", str(out)]) == 0
    rows = read_csv(out / "results.csv")
    assert [(r["cell"], r["seed"]) for r in rows] == [
        ("resnet10t_fcn8s", "0"),
        ("resnet10t_fcn8s", "1"),
        ("lcnet_050_fcn8s", "0"),
        ("lcnet_050_fcn8s", "1"),
    ]
    scores = {}
    for row in rows:
        run = out / "runs" / f"{row['cell']}_seed{row['seed']}"
        summary = json.loads((run / "eval" / "val" / "metrics.json").read_text())
        assert float(row["miou"]) == pytest.approx(100 * summary["miou"])
        assert float(row["miou_ci_low"]) == pytest.approx(100 * summary["miou_ci"][0])
        spread = [100 * e["miou"] for e in summary["checkpoint_spread"]["checkpoints"]]
        assert [e["step"] for e in summary["checkpoint_spread"]["checkpoints"]] == [2, 1]
        assert float(row["corrupted_miou"]) == pytest.approx(100 * summary["corruptions"]["mean_miou"])
        loaded = load_run(run)
        assert (loaded.config.seed, loaded.config.basenet) == (int(row["seed"]), row["basenet"])
        assert int(row["params"]) == sum(p.numel() for p in loaded.model.parameters())
        assert int(row["basenet_params"]) == sum(p.numel() for p in loaded.model.basenet.parameters())
        assert row["imagenet_top1"] == ""  # trained from scratch: their ImageNet accuracy does not apply
        probe = json.loads((out / "probes" / f"probe_{row['basenet']}_none.json").read_text())
        assert float(row["probe_miou"]) == pytest.approx(100 * probe["probe_miou"])
        arrays = EvalDir(run / "eval" / "val").read_per_image()
        scores.setdefault(row["cell"], []).append(
            RunScores(int(row["seed"]), spread, torch.from_numpy(arrays[COUNTS]), tuple(arrays["image_ids"]))
        )
    # cells: mean and std over seeds of the runs' mIoU
    cells = read_csv(out / "cells.csv")
    for cell in cells:
        values = [float(r["miou"]) for r in rows if r["cell"] == cell["cell"]]
        assert float(cell["miou_mean"]) == pytest.approx(np.mean(values))
        assert float(cell["miou_std"]) == pytest.approx(np.std(values, ddof=1))
    # variance.json is the decomposition of the runs' own numbers
    variance = json.loads((out / "variance.json").read_text())
    expected = variance_study(scores, resamples=50, seed=0)
    for name, cell in variance["cells"].items():
        reference = nested_components(np.array([s.checkpoints for s in scores[name]]))
        assert cell["components"]["seed"]["variance"] == pytest.approx(reference["seed"])
        assert cell["components"]["checkpoint"]["variance"] == pytest.approx(reference["checkpoint"])
        assert cell["components"]["test_sampling"]["variance"] == pytest.approx(
            expected["cells"][name]["components"]["test_sampling"]["variance"]
        )
        assert cell["components"]["test_sampling"]["variance"] > 0
    assert [(p["a"], p["b"]) for p in variance["pairs"]] == [("resnet10t_fcn8s", "lcnet_050_fcn8s")]
    predictors = json.loads((out / "predictors.json").read_text())
    assert set(predictors["fcn8s"]) == {"imagenet_top1", "basenet_params", "basenet_gflops", "probe_miou"}
    assert predictors["fcn8s"]["basenet_params"]["n"] == 4 and predictors["fcn8s"]["imagenet_top1"]["n"] == 0
    check_report(out)
    report = (out / "report.md").read_text()
    assert "fcn8s: over 4 runs of 2 basenets" in report or "fcn8s: no predictor can be ranked" in report
    state = json.loads((out / "state.json").read_text())["jobs"]
    assert len(state) == 6 and {j["status"] for j in state.values()} == {"done"}
    # A second run reuses every finished job instead of training again.
    stamp = (out / "runs" / "lcnet_050_fcn8s_seed1" / "checkpoints" / "last.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert seglab(["study", str(config), "--out", str(out)]) == 0
    assert "6 jobs, 6 done, 0 to run" in capsys.readouterr().out
    assert (out / "runs" / "lcnet_050_fcn8s_seed1" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    # A run without its result is resumed in its own folder and evaluated again; nothing else runs.
    run = out / "runs" / "resnet10t_fcn8s_seed0"
    (run / "study_result.json").unlink()
    assert seglab(["study", str(config), "--out", str(out)]) == 0
    assert "6 jobs, 5 done, 1 to run" in capsys.readouterr().out
    assert "resumed from" in (run / "runlog").read_text()
    assert json.loads((out / "state.json").read_text())["jobs"]["resnet10t_fcn8s_seed0"]["attempts"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study", "tiny.yaml"]
    # An edited training section is refused by every run's resume check, naming the difference (a larger
    # `iters` would extend the runs instead, as `seglab train --resume RUN --iters N` does).
    write_study(tmp_path, {**TINY, "train": {**TINY["train"], "crop": [48, 48]}})
    assert seglab(["study", str(config), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert (
        "4 of 6 study jobs failed" in err
        and "differ from its checkpoint" in err
        and "crop: [32, 32] -> [48, 48]" in err
    )
    assert len(err.strip().splitlines()) == 1
    cells = result_columns(out / "runs", "resnet10t", "fcn8s", "synthetic")
    assert cells["mIoU % (95% CI)"].endswith("synthetic val")


@pytest.mark.slow
def test_study_in_parallel_and_through_submitit_gives_the_same_runs_and_reports_failures(tmp_path, capsys):
    test = {"bootstrap": 50, "workers": 0, "device": "cpu"}
    config = write_study(tmp_path, {**TINY, "last_k": 1, "probe": {"steps": 0}, "test": test})
    parallel, cluster = tmp_path / "parallel", tmp_path / "submitit"
    assert seglab(["study", str(config), "--out", str(parallel), "--parallel", "2"]) == 0
    assert "4 jobs, 0 done, 4 to run (local, 2 at once)" in capsys.readouterr().out
    assert sorted(p.name for p in (parallel / "logs").iterdir()) == [
        "lcnet_050_fcn8s_seed0.log",
        "lcnet_050_fcn8s_seed1.log",
        "resnet10t_fcn8s_seed0.log",
        "resnet10t_fcn8s_seed1.log",
    ]
    argv = ["study", str(config), "--out", str(cluster), "--launcher", "submitit_local", "--gpus-per-job", "0"]
    argv += ["--cpus-per-job", "1", "--time", "20"]
    assert seglab(argv) == 0
    # the same seeds give the same runs whichever launcher ran them
    columns = ("cell", "seed", "miou", "miou_ci_low", "params", "basenet_gflops")
    assert [[r[c] for c in columns] for r in read_csv(parallel / "results.csv")] == [
        [r[c] for c in columns] for r in read_csv(cluster / "results.csv")
    ]
    html = (cluster / "report.html").read_text()
    assert all(f"<h2>{s}</h2>" in html for s in SECTIONS)
    state = json.loads((cluster / "state.json").read_text())["jobs"]
    assert all(entry["job_id"] for entry in state.values())
    # A job that fails is recorded and named; the others' results stay (running the study again retries only
    # what is missing: the in-process test above shows it).
    broken = cluster / "runs" / "lcnet_050_fcn8s_seed1"
    (broken / "study_result.json").unlink()
    for checkpoint in (broken / "checkpoints").iterdir():
        checkpoint.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert seglab(argv) == 1
    captured = capsys.readouterr()
    assert "4 jobs, 3 done, 1 to run" in captured.out
    assert "1 of 4 study jobs failed (lcnet_050_fcn8s_seed1:" in captured.err
    assert json.loads((cluster / "state.json").read_text())["jobs"]["lcnet_050_fcn8s_seed1"]["status"] == "failed"
    assert len(read_csv(cluster / "results.csv")) == 3  # the report of what finished
    assert "**1 job(s) failed** and are left out: lcnet_050_fcn8s_seed1" in (cluster / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_ddp_job_trains_through_torchrun(tmp_path):
    study = {
        **TINY,
        "basenets": ["lcnet_050"],
        "seeds": [0],
        "last_k": 1,
        "probe": {"steps": 0},
        "train": {**TINY["train"], "batch_size": 4},
        "test": {"bootstrap": 20, "workers": 0, "device": "cpu"},
    }
    config = write_study(tmp_path, study)
    out = tmp_path / "ddp"
    # the job trains through torchrun wherever it runs (in-process here; a submitit job on a cluster)
    assert seglab(["study", str(config), "--out", str(out), "--ddp", "--gpus-per-job", "2"]) == 0
    runlog = (out / "runs" / "lcnet_050_fcn8s_seed0" / "runlog").read_text()
    assert "on 2 x cpu" in runlog  # two torchrun ranks (gloo on CPU)
    assert len(read_csv(out / "results.csv")) == 1


def test_torchrun_command_and_slurm_parameters():
    assert torchrun_command(Path("runs/.r.train.yaml"), 4)[1:] == [
        *["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4"],
        *["-m", "seglab.study.torchrun_train", "runs/.r.train.yaml"],
    ]
    study = check_study(
        StudyConfig(
            basenets=["resnet18"],
            decoders=["fcn8s"],
            launcher="slurm",
            partition="gpu",
            parallel=8,
            time=600,
            gpus_per_job=4,
            cpus_per_job=16,
            slurm={"account": "seg", "qos": "high"},
        ),
        "s.yaml",
    )
    assert submitit_parameters(study) == {
        "timeout_min": 600,
        "gpus_per_node": 4,
        "tasks_per_node": 1,
        "cpus_per_task": 16,
        "nodes": 1,
        "name": "seglab-study",
        "slurm_array_parallelism": 8,
        "slurm_partition": "gpu",
        "slurm_account": "seg",
        "slurm_qos": "high",
    }


def test_grid_cells_names_and_jobs(tmp_path):
    path = write_study(
        tmp_path,
        {
            "basenets": ["resnet18"],
            "decoders": ["fcn8s", "fcnw"],
            "seeds": [0, 1, 2],
            "grid": {"learnrate": [0.01, 0.003], "crop": [[256], [512, 384]]},
            "train": {"iters": 10},
            "probe": {"steps": 5},
        },
    )
    study = read_study(path)
    cells, jobs = plan(study, tmp_path / "out", str(path))
    assert len(cells) == 2 * 2 * 2 and len(jobs) == 8 * 3 + 1  # every cell once per seed, one probe per basenet
    assert [c.name for c in cells[:4]] == [
        "resnet18_fcn8s_learnrate=0.01_crop=256x256",
        "resnet18_fcn8s_learnrate=0.01_crop=512x384",
        "resnet18_fcn8s_learnrate=0.003_crop=256x256",
        "resnet18_fcn8s_learnrate=0.003_crop=512x384",
    ]
    assert cells[0].label == "resnet18 x fcn8s, learnrate 0.01, crop 256x256"
    first = jobs[0].spec["train"]
    assert (first["crop"], first["learnrate"], first["seed"], first["iters"]) == ([256, 256], 0.01, 0, 10)
    assert [j.spec["train"]["seed"] for j in jobs[:3]] == [0, 1, 2]
    assert jobs[-1].kind == "probe" and jobs[-1].spec["probe"]["steps"] == 5
    assert not any(job.done() for job in jobs)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"basenets": ["vgg16"], "decoders": ["fcn8s"], "epochs": 3}, "unknown key 'epochs'; known keys: basenets,"),
        ({"basenets": [], "decoders": ["fcn8s"]}, "'basenets' must be a non-empty list"),
        ({"basenets": ["vgg16"], "decoders": ["fcn8s"], "seeds": [1, 1]}, "seeds lists a seed twice: [1, 1]"),
        ({"basenets": ["vgg16"], "decoders": ["fcn8s"], "seeds": [-1]}, "seeds must be at least 0, got -1"),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "train": {"basenet": "x"}},
            "train: basenet cannot be set here: the study sets them per run",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "train": {"seed": 3}},
            "train: seed cannot be set here: the study sets it per run (list them in seeds:)",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "train": {"learnrate": "fast"}},
            "train: learnrate must be float, got 'fast'",
        ),
        ({"basenets": ["vgg16"], "decoders": ["fcn8s"], "test": {"flip": "yes"}}, "test: flip must be bool, got 'yes'"),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "test": {"corruptions": ["rain"]}},
            "test: corruptions must be one of all, gaussian_noise,",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "bench": {"fp16": True}},
            "bench: unknown key 'fp16'; known keys: runs, basenets,",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "bench": {"backends": ["tvm"]}},
            "bench: backends must be one of eager, channels_last, compile, onnxruntime, onnxruntime-int8, got 'tvm'",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "probe": {"tap": 5}},
            "probe: tap must be one of 4, 8, 16, 32, got 5",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "grid": {"learnrate": ["fast"]}},
            "grid: learnrate: learnrate must be float, got 'fast'",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "grid": {"lr": [0.1]}},
            "grid: lr: unknown key 'lr'; known keys: basenet,",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "grid": {"seed": [1, 2]}},
            "grid: seed cannot be a grid axis: the study sets it per run; list them under seeds:",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "grid": {"iters": [1]}, "train": {"iters": 2}},
            "grid: iters is also set in train: give it in one place",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "grid": {"iters": 5}},
            "grid: iters must be a non-empty list of values, got 5",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "grid": {"crop": [[1, 2, 3]]}},
            "--crop takes SIZE or HEIGHT WIDTH, got [1, 2, 3]",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "grid": {"crop": [[64], [64, 64]]}},
            "grid points vgg16 x fcn8s, crop 64x64 and vgg16 x fcn8s, crop 64x64 are the same run",
        ),
        (
            {"basenets": ["vgg16"], "decoders": ["fcn8s"], "ddp": True, "gpus_per_job": 0},
            "ddp trains on the job's GPUs: set gpus_per_job to 1 or more",
        ),
    ],
)
def test_study_yaml_errors_name_the_file_and_key(tmp_path, capsys, content, message):
    path = write_study(tmp_path, content, "bad.yaml")
    with pytest.raises(ConfigError, match=rf"bad\.yaml: .*{re.escape(message)}"):
        expand_cells(read_study(path), str(path))
    assert seglab(["study", str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert message in err and "bad.yaml" in err and len(err.strip().splitlines()) == 1


def simulate(rng, seeds: int, k: int, var_seed: float, var_ckpt: float) -> np.ndarray:
    return 50 + rng.normal(0, np.sqrt(var_seed), (seeds, 1)) + rng.normal(0, np.sqrt(var_ckpt), (seeds, k))


@pytest.mark.parametrize(("seeds", "k", "var_seed", "var_ckpt"), [(5, 4, 1.0, 0.5), (3, 3, 0.3, 1.0), (8, 2, 0.0, 1.0)])
def test_variance_components_recover_known_values_with_95_percent_coverage(seeds, k, var_seed, var_ckpt):
    rng = np.random.default_rng(seeds * 10 + k)
    estimates, covered = [], np.zeros(2)
    for _ in range(600):
        out = nested_components(simulate(rng, seeds, k, var_seed, var_ckpt))
        estimates.append(((out["ms_between"] - out["ms_within"]) / k, out["checkpoint"]))  # untruncated: unbiased
        covered += [
            out["seed_ci"][0] <= var_seed <= out["seed_ci"][1],
            out["checkpoint_ci"][0] <= var_ckpt <= out["checkpoint_ci"][1],
        ]
    mean_seed, mean_ckpt = np.mean(estimates, axis=0)
    assert mean_seed == pytest.approx(var_seed, abs=0.12 * max(var_seed, 1.0))
    assert mean_ckpt == pytest.approx(var_ckpt, rel=0.08)
    assert 0.92 <= covered[0] / 600 <= 0.995 and 0.92 <= covered[1] / 600 <= 0.98


def test_variance_components_by_hand_and_degenerate_designs():
    y = np.array([[50.0, 52.0], [54.0, 56.0]])
    out = nested_components(y)
    # seed means 51, 55: MS_between = 2 * (4 + 4) / 1 = 16; MS_within = (1+1+1+1) / 2 = 2
    assert (out["ms_between"], out["ms_within"]) == (16.0, 2.0)
    assert (out["seed"], out["checkpoint"]) == (7.0, 2.0)
    one_checkpoint = nested_components(np.array([[50.0], [54.0]]))
    assert (one_checkpoint["seed"], one_checkpoint["checkpoint"]) == (8.0, None)
    one_seed = nested_components(np.array([[50.0, 52.0, 51.0]]))
    assert (one_seed["seed"], one_seed["checkpoint"]) == (None, 1.0)


def test_test_sampling_component_is_the_bootstrap_over_images_and_paired_difference():
    g = torch.Generator().manual_seed(0)
    cms = [metrics.class_counts(torch.randint(0, 30, (12, 3, 3), generator=g)) for _ in range(4)]
    runs = {
        "a": [RunScores(0, [60.0, 61.0], cms[0], ("x",)), RunScores(1, [62.0, 61.5], cms[1], ("x",))],
        "b": [RunScores(0, [55.0, 54.0], cms[2], ("x",)), RunScores(1, [56.0, 57.0], cms[3], ("x",))],
    }
    out = variance_study(runs, resamples=200, seed=3)
    weights = resample_weights(12, 200, 3)

    def boot(cm):  # each resample's mIoU, from the drawn images' matrices (repeated as often as drawn)
        drawn = [torch.repeat_interleave(torch.arange(12), w.long()) for w in weights]
        return np.array([100 * float(metrics.pooled_miou(cm[d])) for d in drawn])

    per_run = [np.var(boot(c), ddof=1) for c in cms]
    assert out["cells"]["a"]["components"]["test_sampling"]["variance"] == pytest.approx(np.mean(per_run[:2]))
    paired = np.var((boot(cms[0]) + boot(cms[1])) / 2 - (boot(cms[2]) + boot(cms[3])) / 2, ddof=1)
    pair = out["pairs"][0]
    assert pair["test_variance"] == pytest.approx(paired)
    seed_a, ckpt_a = (out["cells"]["a"]["components"][k]["variance"] for k in ("seed", "checkpoint"))
    seed_b, ckpt_b = (out["cells"]["b"]["components"][k]["variance"] for k in ("seed", "checkpoint"))
    sd = np.sqrt((seed_a + ckpt_a) / 2 + (seed_b + ckpt_b) / 2 + paired)
    assert pair["sd"] == pytest.approx(sd)
    assert pair["detectable"] == pytest.approx((1.959964 + 0.841621) * sd, rel=1e-5)
    assert pair["threshold"] == pytest.approx(1.959964 * sd, rel=1e-5)
    assert pair["difference"] == pytest.approx(61.0 - 55.5)  # the seeds' mean at the newest checkpoint
    shares = [p["share"] for p in out["cells"]["a"]["components"].values()]
    assert sum(shares) == pytest.approx(1.0)
    one_seed = decompose([RunScores(0, [60.0, 61.0], cms[0], ("x",))], None)
    assert (
        detectable(one_seed["components"], one_seed["components"], 1, 1, 0.1)["why"] == "needs 2 or more seeds per cell"
    )


def test_spearman_by_hand_with_missing_values_and_its_bootstrap_interval():
    rows = [
        {"imagenet_top1": x, "miou": y, "basenet_gflops": g, "decoder": d, "basenet": f"b{i}"}
        for i, (x, y, g, d) in enumerate(
            [(1, 1, 4, "a"), (2, 3, 3, "a"), (3, 2, 2, "a"), (4, 4, 1, "a"), (None, 9, 0, "b")]
        )
    ]
    # ranks of x 1 2 3 4, of y 1 3 2 4: d^2 sum 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman(rows, "imagenet_top1") == {
        "n": 4,
        "rho": pytest.approx(0.8),
        "p": pytest.approx(spearmanr([1, 2, 3, 4], [1, 3, 2, 4]).pvalue),
    }
    boot = bootstrap_spearman(rows[:4], "imagenet_top1", resamples=300, seed=1)
    assert boot["ci"][0] <= 0.8 <= boot["ci"][1] <= 1.0 and 0 < boot["usable"] <= 300
    corr = correlation_groups(rows, resamples=50)
    assert corr["a"]["basenet_gflops"]["rho"] == pytest.approx(-0.8)
    assert corr["b"]["imagenet_top1"] == {
        "n": 0,
        "rho": None,
        "p": None,
        "ci": None,
        "resamples": 50,
        "usable": 0,
        "basenets": 1,
    }


def test_answer_names_the_best_predictor_and_whether_imagenet_accuracy_predicts():
    def c(rho, ci, basenets=5):
        return {"n": 10, "rho": rho, "p": 0.01, "ci": ci, "resamples": 100, "usable": 100, "basenets": basenets}

    text = answer(
        "fcn8s",
        {
            "imagenet_top1": c(0.2, [-0.5, 0.8]),
            "basenet_params": c(0.1, [-0.6, 0.7]),
            "basenet_gflops": c(-0.3, [-0.9, 0.4]),
            "probe_miou": c(0.9, [0.6, 1.0]),
        },
    )
    assert text.startswith(
        "fcn8s: over 10 runs of 5 basenets, the best predictor of fine-tuned mIoU is the linear probe"
    )
    assert "ImageNet top-1 gives rho +0.20, 95% CI -0.50 to +0.80" in text
    assert text.endswith("so ImageNet accuracy is not a reliable predictor here (its interval includes 0).")
    keys = ("imagenet_top1", "basenet_params", "basenet_gflops", "probe_miou")
    strong = answer("fcnw", {k: c(0.95 if k == "imagenet_top1" else 0.1, [0.7, 1.0], 2) for k in keys})
    assert "is the ImageNet top-1" in strong and "does predict segmentation accuracy here" in strong
    assert "with 2 basenets the ranking rests on 2 distinct predictor values" in strong
    tied = answer("lraspp", {k: c(-0.7 if k == "probe_miou" else 0.7, [0.2, 0.9]) for k in keys})
    assert tied.startswith(
        "lraspp: over 10 runs of 5 basenets, ImageNet top-1, basenet params, basenet GFLOPs and linear probe mIoU "
        "(reversed) predict fine-tuned mIoU equally well (rho +0.70, 95% CI +0.20 to +0.90, n=10): they order"
    )


def test_linear_probe_trains_only_its_classifier_and_keeps_the_basenet_frozen():
    basenet = build_basenet("resnet10t")
    probe = ProbeModel(basenet, 16, 6)
    before = {k: v.clone() for k, v in basenet.state_dict().items()}
    probe.train()
    assert not basenet.training and probe.classifier.training
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    logits = probe(probe.normalize(images))
    assert logits.shape == (2, 6, 32, 32)
    torch.nn.functional.cross_entropy(logits, torch.zeros(2, 32, 32, dtype=torch.long)).backward()
    assert probe.classifier.weight.grad is not None
    assert all(p.grad is None for p in basenet.parameters())
    assert all(torch.equal(before[k], v) for k, v in basenet.state_dict().items())  # BN statistics untouched
    assert probe.classifier.in_channels == basenet.tap(16).channels


@pytest.mark.parametrize("pretrained", ["imagenet", "none"])
def test_result_row_takes_top1_only_for_imagenet_weights(tmp_path, pretrained):
    run = tmp_path / "run"
    (run / "eval" / "val").mkdir(parents=True)
    (run / "runargs.yaml").write_text(yaml.safe_dump({"basenet": "mobilenet_v1", "pretrained": pretrained}))
    summary = {"miou": 0.5, "miou_ci": [0.25, 0.75], "dataset": {"name": "voc", "split": "val"}}
    measured = {
        "params": 10,
        "gflops": 1.5,
        "basenet_params": 8,
        "basenet_gflops": 1.0,
        "threads": 1,
        "latency": {"eager": 2.0},
        "latency_iqr": {"eager": (1.5, 3.0)},
    }
    row = result_row("mobilenet_v1", "fcnw", RunDir(run), summary, measured)
    assert (row["miou"], row["miou_ci_low"], row["miou_ci_high"], row["eval"]) == (50, 25, 75, "voc val")
    assert (row["latency_ms_eager"], row["latency_q1_ms_eager"], row["latency_q3_ms_eager"]) == (2.0, 1.5, 3.0)
    assert (row["basenet_params"], row["checkpoints"], row["corrupted_miou"]) == (8, 1, None)
    assert row["imagenet_top1"] == (BASENETS["mobilenet_v1"].top1.top1 if pretrained == "imagenet" else None)


def test_imagenet_top1_for_every_seed_basenet():
    for basenet in SEED_BASENETS:
        top1 = basenet_spec(basenet).imagenet_top1()
        assert top1 is not None and 60 < top1.top1 < 90 and top1.source
    assert basenet_spec("googlenet").imagenet_top1() == basenet_spec("inception_v1").imagenet_top1()
    assert basenet_spec("vgg16").imagenet_top1().weights == "torchvision VGG16_Weights.IMAGENET1K_V1"
    assert basenet_spec("vgg16").imagenet_top1().top1 == 71.592
    assert basenet_spec("convnext_tiny").imagenet_top1() is None
