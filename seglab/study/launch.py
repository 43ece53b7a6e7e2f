"""Running a study's jobs: in this process, in N local worker processes, or through submitit (its local
executor, or SLURM).

Scheduling is not seglab's: local workers are a `concurrent.futures.ProcessPoolExecutor` (spawned
processes; with GPUs, each worker sees one of them through CUDA_VISIBLE_DEVICES, round robin), and cluster
jobs are submitit's (one SLURM array, at most `parallel` jobs running at once; the local executor runs
every job at once). A job's output goes to `<study>/logs/<job>.log`. A job that fails is recorded in
state.json with its error and log, and the other jobs go on; the study then stops naming the failed ones,
and running it again retries exactly those (plus anything never finished).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from seglab.config import StudyConfig
from seglab.errors import ConfigError, SeglabError
from seglab.plugins import optional_import
from seglab.study.jobs import StudyJob, run_job, run_logged
from seglab.study.plan import Job

Report = Callable[[Job, dict | None, str | None, str | None], None]
"""Called once per finished job: (job, result or None, error message or None, log path or None)."""


def log_path(out: Path, job: Job) -> Path:
    """Return the log file of one job."""
    return out / "logs" / f"{job.name}.log"


def run_inline(jobs: list[Job], report: Report) -> None:
    """Run the jobs one after the other in this process; a SeglabError fails the job, a bug propagates."""
    for i, job in enumerate(jobs, start=1):
        print(f"[study {i}/{len(jobs)}] {job.name}", flush=True)
        try:
            result = run_job(job.spec)
        except SeglabError as err:
            report(job, None, str(err), None)
            continue
        report(job, result, None, None)


def _worker_init(gpus: multiprocessing.Queue | None, threads: int) -> None:
    """Give a local worker process its GPU (if any) and its share of the CPU threads."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    torch.set_num_threads(threads)


def run_pool(jobs: list[Job], workers: int, out: Path, report: Report) -> None:
    """Run the jobs in `workers` spawned processes, one GPU each when CUDA is available."""
    context = multiprocessing.get_context("spawn")  # no CUDA or thread state is inherited by a fork
    gpus = None
    if torch.cuda.is_available():
        gpus = context.Queue()
        for i in range(workers):
            gpus.put(i % torch.cuda.device_count())
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(gpus, threads)) as pool:
        futures = {pool.submit(run_logged, job.spec, str(log_path(out, job))): job for job in jobs}
        print(f"running {len(jobs)} jobs in {workers} local worker processes; logs in {out / 'logs'}", flush=True)
        for future in as_completed(futures):
            job, log = futures[future], str(log_path(out, futures[future]))
            error = future.exception()
            if error is not None:
                report(job, None, f"{type(error).__name__}: {error} (traceback in {log})", log)
            elif "failed" in future.result():
                report(job, None, future.result()["failed"], log)
            else:
                report(job, future.result(), None, log)


def submitit_parameters(study: StudyConfig) -> dict:
    """Return the submitit executor parameters of a study (generic ones, and slurm_* ones for SLURM)."""
    params = {
        "timeout_min": study.time,
        "gpus_per_node": study.gpus_per_job,
        "tasks_per_node": 1,  # torchrun, not SLURM, starts the DDP processes of a job
        "cpus_per_task": study.cpus_per_job,
        "nodes": 1,
        "name": "seglab-study",
    }
    if study.launcher == "slurm":
        params["slurm_array_parallelism"] = study.parallel
        if study.partition:
            params["slurm_partition"] = study.partition
        params.update({f"slurm_{key}": value for key, value in study.slurm.items()})
    return params


def run_submitit(jobs: list[Job], study: StudyConfig, out: Path, report: Report, on_submit: Callable) -> None:
    """Submit the jobs through submitit (one array) and wait for them; failures are reported, not raised."""
    submitit = optional_import("submitit", "cluster", f"--launcher {study.launcher}")
    cluster = "slurm" if study.launcher == "slurm" else "local"
    executor = submitit.AutoExecutor(folder=out / "submitit", cluster=cluster)
    try:
        executor.update_parameters(**submitit_parameters(study))
    except ValueError as err:  # submitit's check of parameter names and values
        raise ConfigError(f"study slurm settings: {err}") from None
    logs = [str(log_path(out, job)) for job in jobs]
    submitted = executor.map_array(StudyJob(), [job.spec for job in jobs], logs)
    by_id = {}
    for job, handle in zip(jobs, submitted, strict=True):
        by_id[handle.job_id] = job
        on_submit(job, handle.job_id)
    print(f"submitted {len(jobs)} jobs to submitit ({cluster}); logs in {out / 'logs'}", flush=True)
    for handle in submitit.helpers.as_completed(submitted, poll_frequency=30 if cluster == "slurm" else 1):
        job, log = by_id[handle.job_id], str(log_path(out, by_id[handle.job_id]))
        try:
            result = handle.result()
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            report(job, None, f"{first} (job {handle.job_id}; see {log} and {handle.paths.stderr})", log)
            continue
        if "failed" in result:
            report(job, None, result["failed"], log)
        else:
            report(job, result, None, log)


def launch(jobs: list[Job], study: StudyConfig, out: Path, report: Report, on_submit: Callable) -> None:
    """Run `jobs` with the study's launcher; `report` is called as each one finishes."""
    if not jobs:
        return
    if study.launcher == "local" and (study.parallel == 1 or len(jobs) == 1):
        run_inline(jobs, report)
    elif study.launcher == "local":
        run_pool(jobs, min(study.parallel, len(jobs)), out, report)
    else:
        run_submitit(jobs, study, out, report, on_submit)
