"""What one study job does, in whichever process runs it (this one, a local worker, a SLURM node).

A run job trains its run with `seglab train`'s engine (in-process, or on the job's GPUs through torchrun
with `ddp`), resuming from the last checkpoint when the run folder exists, evaluates it with `seglab test`
(the K newest checkpoints with `last_k`), measures it with `seglab bench`'s code and writes
`<run>/study_result.json`. A probe job trains a basenet's linear probe and writes `probes/<name>.json`.
Each result holds the job's spec, so that the study knows what it was computed for.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import torch

from seglab import config as cfg_mod
from seglab.bench import bench_model
from seglab.config import BenchConfig, ProbeConfig, TestConfig, TrainConfig
from seglab.engine.checkpoint import load_run
from seglab.engine.distributed import resolve_device
from seglab.engine.train import train
from seglab.errors import SeglabError, TrainingError
from seglab.evaluation import test
from seglab.models import basenet_spec
from seglab.models.complexity import model_complexity
from seglab.plugins import load_plugins, optional_import
from seglab.runs import RunDir, atomic_write
from seglab.study.plan import RESULT
from seglab.study.probe import train_probe

PRETRAINED_WITH_TOP1 = ("imagenet", "package", "hub")
TORCHRUN_TRAIN = "seglab.study.torchrun_train"
"""The module torchrun starts on every rank of a DDP run job."""


def train_keys(spec: dict) -> dict:
    """Return the TrainConfig keys of a run job: a new run's name, or `resume` when its folder has a checkpoint.

    A folder without any checkpoint is a run that died before its first one: it holds nothing to resume, so
    it is removed and the run starts again.
    """
    run = RunDir(Path(spec["run"]))
    keys = dict(spec["train"])
    if run.path.exists() and not run.last.is_file() and not run.step_files():
        print(f"{run.path} has no checkpoint yet (it died before its first one): starting it again", flush=True)
        shutil.rmtree(run.path)
    if run.path.exists():
        keys["resume"] = str(run.path)
    else:
        keys["run_name"] = run.name
    return keys


def torchrun_command(config_file: Path, nproc: int) -> list[str]:
    """Return the torchrun command line that trains the run described by `config_file` on `nproc` processes."""
    return [
        *[sys.executable, "-m", "torch.distributed.run", "--standalone"],
        *["--nproc-per-node", str(nproc), "-m", TORCHRUN_TRAIN, str(config_file)],
    ]


def train_run(spec: dict) -> RunDir:
    """Train (or resume) the run of a run job; return its folder."""
    run = RunDir(Path(spec["run"]))
    keys = train_keys(spec)
    if spec["ddp"]:
        config_file = run.path.parent / f".{run.name}.train.yaml"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(config_file, json.dumps(keys))  # JSON is YAML: the rank processes read it with load_yaml
        done = subprocess.run(torchrun_command(config_file, spec["nproc"]), capture_output=True, text=True)
        print(done.stdout, end="")
        print(done.stderr, end="", file=sys.stderr)
        code = done.returncode
    else:
        # Resuming checks these keys against the run's checkpoint, so an edited study YAML is refused, not ignored.
        code = train(cfg_mod.from_dict(TrainConfig, keys, str(run.path)), explicit=keys)
    if code != 0:
        raise TrainingError(f"training {run.name} stopped with exit code {code}; run the study again to resume it")
    return run


def test_config(spec: dict, run: RunDir) -> TestConfig:
    """Return the `seglab test` config of a run job: the study's test section, the K newest checkpoints."""
    keys = {**spec["test"], "run": str(run.path)}
    if spec["last_k"] > 1:
        keys["last_k"] = spec["last_k"]
    return cfg_mod.from_dict(TestConfig, keys, "study: test")


def measure_run(run: RunDir, bench: BenchConfig) -> dict:
    """Return params, GFLOPs (model and basenet alone) and per-backend latency of a run's model."""
    model = load_run(run.path).model
    size = tuple(bench.size)
    threads = bench.threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        measured = model_complexity(model, size)
        basenet = model_complexity(model.basenet, size)
        latency = bench_model(
            model,
            size=size,
            batch=bench.batch_size,
            backends=bench.backends,
            device=resolve_device(bench.device),
            warmup=bench.warmup,
            repeats=bench.repeats,
            threads=threads,
        )
    finally:
        torch.set_num_threads(previous)
    return {
        "params": measured["params"],
        "gflops": measured["gflops"],
        "basenet_params": basenet["params"],
        "basenet_gflops": basenet["gflops"],
        "threads": threads,
        "latency": {b: lat.median_ms for b, lat in latency.items()},
        "latency_iqr": {b: (lat.q1_ms, lat.q3_ms) for b, lat in latency.items()},
    }


def percent(value: float | None) -> float | None:
    """Return a share as a percentage (None stays None)."""
    return None if value is None else 100 * value


def result_row(basenet: str, decoder: str, run: RunDir, summary: dict, measured: dict) -> dict:
    """Return one run's row of results.csv: mIoU and CI (%), complexity, latency, ImageNet top-1, robustness."""
    low, high = summary["miou_ci"]
    pretrained = run.read_runargs().get("pretrained")
    # The figure describes the weights `--pretrained imagenet` loads; other starts (none, a file) have none.
    top1 = basenet_spec(basenet).imagenet_top1() if pretrained in PRETRAINED_WITH_TOP1 else None
    spread = summary.get("checkpoint_spread")
    corruptions = summary.get("corruptions") or {}
    row = {
        "basenet": basenet,
        "decoder": decoder,
        "miou": percent(summary["miou"]),
        "miou_ci_low": percent(low),
        "miou_ci_high": percent(high),
        "params": measured["params"],
        "gflops": measured["gflops"],
        "basenet_params": measured.get("basenet_params"),
        "basenet_gflops": measured.get("basenet_gflops"),
        "pretrained": pretrained,
    }
    for backend, median in measured["latency"].items():
        q1, q3 = measured["latency_iqr"][backend]
        row.update({f"latency_ms_{backend}": median, f"latency_q1_ms_{backend}": q1, f"latency_q3_ms_{backend}": q3})
    row.update(
        {
            "threads": measured["threads"],
            "imagenet_top1": top1.top1 if top1 else None,
            "imagenet_weights": top1.weights if top1 else None,
            "checkpoints": len(spread["checkpoints"]) if spread else 1,
            "checkpoint_std": percent(spread["std"]) if spread else None,
            "corrupted_miou": percent(corruptions.get("mean_miou")),
            "relative_robustness": corruptions.get("relative_robustness"),
            "eval": f"{summary['dataset']['name']} {summary['dataset']['split']}",
            "run": str(run.path),
        }
    )
    return row


def run_job(spec: dict) -> dict:
    """Do one job (a run or a probe), write its result file and return the result."""
    load_plugins(spec["train"].get("plugins", []))
    if spec["kind"] == "probe":
        return probe_job(spec)
    run = train_run(spec)
    outcome = test(test_config(spec, run))
    bench = cfg_mod.from_dict(BenchConfig, spec["bench"], "study: bench")
    train_cfg = spec["train"]
    row = result_row(train_cfg["basenet"], train_cfg["decoder"], run, outcome.summary, measure_run(run, bench))
    result = {"spec": spec, "row": row, "eval": str(outcome.eval_dir.path)}
    atomic_write(run.path / RESULT, json.dumps(result, indent=2) + "\n")
    return result


def probe_job(spec: dict) -> dict:
    """Train and score one basenet's linear probe; write probes/<name>.json."""
    train_cfg = cfg_mod.from_dict(TrainConfig, {**spec["train"], "basenet": spec["basenet"]}, "study: train")
    probe = cfg_mod.from_dict(ProbeConfig, spec["probe"], "study: probe")
    split = spec["test"].get("split", cfg_mod.default_of(cfg_mod.fields_of(TestConfig)["split"]))
    scored = train_probe(train_cfg, probe, split, spec["seed"])
    result = {"spec": spec, "basenet": spec["basenet"], "pretrained": train_cfg.pretrained, **scored}
    path = Path(spec["result"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(result, indent=2) + "\n")
    print(f"linear probe of {spec['basenet']} ({train_cfg.pretrained}): mIoU {100 * (scored['probe_miou'] or 0):.2f}")
    return result


def run_logged(spec: dict, log: str) -> dict:
    """Run one job with its output in `log`; a user-input fault comes back as {"failed": message}.

    Any other exception is a bug: its traceback goes to the log and the exception is raised again.
    """
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        try:
            return run_job(spec)
        except SeglabError as err:
            print(f"error: {err}", flush=True)
            return {"failed": str(err)}
        except BaseException:
            traceback.print_exc()
            raise


class StudyJob:
    """The callable submitit runs: one job, resubmitted when SLURM preempts it or its time runs out.

    A resubmitted run job resumes from its last checkpoint (seglab's own resume), so `checkpoint` only
    hands submitit the same call again.
    """

    def __call__(self, spec: dict, log: str) -> dict:
        return run_logged(spec, log)

    def checkpoint(self, spec: dict, log: str):
        """Return the same job for submitit to requeue."""
        submitit = optional_import("submitit", "cluster", "a study job")
        return submitit.helpers.DelayedSubmission(self, spec, log)
