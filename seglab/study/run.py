"""`run_study`: plan the jobs, run what is missing with the study's launcher, then analyse and report."""

from __future__ import annotations

from pathlib import Path

import torch

from seglab import config as cfg_mod
from seglab.config import StudyConfig, TestConfig, check_study
from seglab.errors import TrainingError
from seglab.plugins import load_plugins
from seglab.runs import COUNTS, EvalDir
from seglab.study.launch import launch
from seglab.study.plan import STATE, Cell, Job, State, plan, probe_key
from seglab.study.predictors import answer, correlation_groups
from seglab.study.results import RunRecord, cell_rows, cells_table, robustness_rows, write_outputs
from seglab.study.variance import RunScores, variance_study


def read_study(path: str | Path) -> StudyConfig:
    """Read and check a study YAML; errors name the file and the offending key."""
    return check_study(cfg_mod.from_dict(StudyConfig, cfg_mod.load_yaml(path, "study file"), str(path)), str(path))


def run_scores(record: RunRecord, evaluation: EvalDir) -> RunScores:
    """Return what the variance decomposition needs of one run: checkpoint mIoUs and per-image class counts."""
    spread = record.summary.get("checkpoint_spread")
    checkpoints = [100 * e["miou"] for e in spread["checkpoints"]] if spread else [record.row["miou"]]
    arrays = evaluation.read_per_image()
    ids = tuple(str(i) for i in arrays["image_ids"])
    return RunScores(record.seed, checkpoints, torch.from_numpy(arrays[COUNTS]), ids)


def gather(jobs: list[Job]) -> tuple[list[RunRecord], list[RunScores]]:
    """Return the records and variance inputs of every finished run job, with its probe's mIoU."""
    probes = {}
    for job in jobs:
        if job.kind == "probe" and job.done():
            result = job.read_result()
            probes[(result["basenet"], result["pretrained"])] = result["probe_miou"]
    records, scores = [], []
    for job in jobs:
        if job.kind != "run" or not job.done():
            continue
        result = job.read_result()
        evaluation = EvalDir(Path(result["eval"]))
        probe = probes.get(probe_key(job.cell, job.spec["train"]))
        row = {
            "cell": job.cell.name,
            "seed": job.seed,
            "grid": job.cell.grid_text,
            **result["row"],
            "probe_miou": None if probe is None else 100 * probe,
        }
        record = RunRecord(job.cell, job.seed, row, evaluation.read_summary())
        records.append(record)
        scores.append(run_scores(record, evaluation))
    return records, scores


def analyse(
    study: StudyConfig,
    out: Path,
    cells: list[Cell],
    records: list[RunRecord],
    scores: list[RunScores],
    failed: list[str],
    source: str,
) -> dict:
    """Compute the cell table, variance decomposition, robustness and correlations; write every output."""
    test_cfg = cfg_mod.from_dict(TestConfig, {**study.test, "run": "-"}, f"{source}: test")
    by_cell: dict[str, list[RunScores]] = {}
    for record, score in zip(records, scores, strict=True):
        by_cell.setdefault(record.cell.name, []).append(score)
    rows = [r.row for r in records]
    context = {
        "name": out.name,
        "study": study,
        "cells": cells,
        "records": records,
        "rows": rows,
        "cell_rows": cell_rows(cells, records),
        "variance": variance_study(by_cell, resamples=test_cfg.bootstrap, seed=test_cfg.seed),
        "robustness": robustness_rows(cells, records),
        "correlations": correlation_groups(rows, resamples=test_cfg.bootstrap, seed=test_cfg.seed),
        "failed": failed,
        "eval": rows[0]["eval"],
    }
    written = write_outputs(context, out)
    print(cells_table(context["cell_rows"]))
    for group, corr in context["correlations"].items():
        print(answer(group, corr))
    print(f"wrote {written['report']}, {written['markdown']}, {written['csv']} and variance.json in {out}")
    return context


def run_study(study: StudyConfig, out: str | Path, source: str) -> dict:
    """Run (or continue) the study into `out`: every missing job, then the tables, plots and report.

    `source` names the study file in messages. Returns the report's context (rows, cells, variance, ...).
    """
    load_plugins(study.plugins)
    out = Path(out)
    cells, jobs = plan(study, out, source)
    state = State.load(out / STATE)
    todo = [job for job in jobs if not job.done()]
    waiting = {job.name for job in todo}
    for job in jobs:
        if job.name not in waiting:
            state.jobs.setdefault(job.name, {"attempts": 1}).update(kind=job.kind, status="done", error=None)
    state.save()
    where = study.launcher + (f", {study.parallel} at once" if study.parallel > 1 else "")
    print(f"study {out}: {len(jobs)} jobs, {len(jobs) - len(todo)} done, {len(todo)} to run ({where})", flush=True)
    for job in todo:
        previous = state.jobs.get(job.name, {}).get("attempts", 0)
        state.update(job.name, kind=job.kind, status="running", attempts=previous + 1, error=None)

    def report(job: Job, result: dict | None, error: str | None, log: str | None) -> None:
        state.update(job.name, status="failed" if error else "done", error=error, log=log)
        print(f"  {job.name}: {'failed: ' + error if error else 'done'}", flush=True)

    launch(todo, study, out, report, on_submit=lambda job, job_id: state.update(job.name, job_id=str(job_id)))
    failed = [job.name for job in jobs if state.jobs[job.name].get("status") == "failed"]
    records, scores = gather(jobs)
    context = analyse(study, out, cells, records, scores, failed, source) if records else {}
    if failed:
        errors = "; ".join(f"{name}: {state.jobs[name]['error']}" for name in failed)
        kept = "the report leaves them out; " if records else ""
        raise TrainingError(
            f"{len(failed)} of {len(jobs)} study jobs failed ({errors}); {kept}run the study again to retry only "
            f"them (state in {out / STATE}, logs in {out / 'logs'})"
        )
    return context
