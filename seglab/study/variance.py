"""Where a cell's mIoU spread comes from: the training seed, the checkpoint chosen among the last K, and the
test images; and the smallest mIoU difference between two cells the study could detect.

Method. A cell's runs give mIoU values y[s, k] for seeds s = 1..S and their K newest checkpoints k, all on
the same test images. They are read as the balanced one-way nested random-effects model

    y[s, k] = mu + a[s] + b[s, k],   a ~ N(0, var_seed),   b ~ N(0, var_checkpoint),

whose components are estimated by the analysis of variance (expected mean squares; Searle, Casella &
McCulloch, "Variance Components", Wiley 1992, ch. 3): MS_within = sum (y[s,k] - ybar[s])^2 / (S (K - 1))
estimates var_checkpoint; (MS_between - MS_within) / K, MS_between = K sum (ybar[s] - ybar)^2 / (S - 1),
estimates var_seed (truncated at 0). Their 95% intervals: the exact chi-square interval for var_checkpoint,
and the modified large-sample interval of Ting, Burdick & Graybill (J. Statist. Comput. Simul. 1990; also
Burdick & Graybill, "Confidence Intervals on Variance Components", 1992, sec. 3.2) for var_seed, a
difference of mean squares. With K = 1 the checkpoint part cannot be separated and the seed component
holds both; with S = 1 there is no seed component.

The test-set part is the bootstrap over images (Efron & Tibshirani 1993): resampling the test images, with
the same draws for every run, gives each run's mIoU over resamples; var_test is the mean over the cell's
runs of that variance, reported with its range over runs. The seed and checkpoint components are measured
on one fixed test set and the test component around it, so to first order the three add up to the
variance of one run's reported mIoU (this is the decomposition of Bouthillier et al., "Accounting for
Variance in Machine Learning Benchmarks", MLSys 2021, with checkpoints as one more source).

Detectable difference. Two cells A and B, each reported as the mean over its S seeds of the newest
checkpoint's mIoU on the same images, differ by D with variance

    var(D) = (var_seed,A + var_checkpoint,A) / S_A + (var_seed,B + var_checkpoint,B) / S_B + var_test(D),

var_test(D) being the paired bootstrap variance of the difference of the two cells' seed-mean mIoUs
(resampling the same images for both, which removes what the two cells share). A true difference is
significant at 95% (two-sided) half the time when it is 1.96 sd(D) and 80% of the time at
(1.96 + 0.84) sd(D): the latter is reported as the smallest detectable difference (the usual power
calculation with normal quantiles; with few seeds var_seed itself is uncertain, as its interval shows).
Checkpoints among the last K of one run are not independent draws: the model treats them as exchangeable,
which a steady (saturated) end of training makes reasonable.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import chi2, f, norm

from seglab.metrics.bootstrap import resample_weights, resampled_class_iou
from seglab.metrics.confusion import nanmean

LEVEL = 0.95
POWER = 0.80
METHOD = (
    "balanced nested random effects by ANOVA (Searle, Casella & McCulloch 1992): var_checkpoint = MS_within "
    "(chi-square CI), var_seed = (MS_between - MS_within) / K truncated at 0 (Ting-Burdick-Graybill 1990 "
    "modified large-sample CI); var_test = mean over runs of the bootstrap variance over test images "
    "(shared draws). Units: mIoU points squared."
)


@dataclass
class RunScores:
    """One run of a cell: its seed, mIoU (points) of its checkpoints newest first, and its per-image class counts
    (`seglab.metrics.class_counts`: [N, 3, C])."""

    seed: int
    checkpoints: list[float]
    per_image: torch.Tensor | None = None
    image_ids: tuple[str, ...] = ()


def _component(variance: float | None, ci: list[float | None] | None, total: float | None) -> dict:
    if variance is None:
        return {"variance": None, "std": None, "ci": None, "share": None}
    share = variance / total if total else None
    return {"variance": variance, "std": float(np.sqrt(variance)), "ci": ci, "share": share}


def checkpoint_interval(ms_within: float, df: int, level: float = LEVEL) -> list[float]:
    """Return the exact chi-square interval of var_checkpoint from MS_within with `df` degrees of freedom."""
    tail = (1 - level) / 2
    return [float(df * ms_within / chi2.ppf(1 - tail, df)), float(df * ms_within / chi2.ppf(tail, df))]


def seed_interval(ms_between: float, ms_within: float, n1: int, n2: int, k: int, level: float = LEVEL) -> list:
    """Return the modified large-sample interval (Ting, Burdick & Graybill 1990) of (MS_b - MS_w) / K.

    MS_between has `n1` degrees of freedom, MS_within `n2`; the lower end is truncated at 0.
    """
    tail = (1 - level) / 2
    c = 1.0 / k
    estimate = c * (ms_between - ms_within)
    f1_hi, f1_lo = chi2.ppf(1 - tail, n1) / n1, chi2.ppf(tail, n1) / n1  # F(n1, infinity) quantiles
    f2_hi, f2_lo = chi2.ppf(1 - tail, n2) / n2, chi2.ppf(tail, n2) / n2
    f12_hi, f12_lo = f.ppf(1 - tail, n1, n2), f.ppf(tail, n1, n2)
    g1, h2 = 1 - 1 / f1_hi, 1 / f2_lo - 1
    g12 = ((f12_hi - 1) ** 2 - g1**2 * f12_hi**2 - h2**2) / f12_hi
    h1, g2 = 1 / f1_lo - 1, 1 - 1 / f2_hi
    h12 = ((1 - f12_lo) ** 2 - h1**2 * f12_lo**2 - g2**2) / f12_lo
    b, w = c * ms_between, c * ms_within
    low = estimate - np.sqrt(max(0.0, g1**2 * b**2 + h2**2 * w**2 + g12 * b * w))
    high = estimate + np.sqrt(max(0.0, h1**2 * b**2 + g2**2 * w**2 + h12 * b * w))
    return [float(max(0.0, low)), float(max(0.0, high))]


def nested_components(values: np.ndarray, level: float = LEVEL) -> dict:
    """Return var_seed and var_checkpoint (with intervals) of y[s, k] by the nested ANOVA described above."""
    values = np.asarray(values, dtype=np.float64)
    seeds, k = values.shape
    seed_means = values.mean(1)
    out = {"seeds": seeds, "checkpoints": k, "mean": float(values.mean())}
    ms_within = float(((values - seed_means[:, None]) ** 2).sum() / (seeds * (k - 1))) if k > 1 else None
    ms_between = float(k * ((seed_means - seed_means.mean()) ** 2).sum() / (seeds - 1)) if seeds > 1 else None
    out["ms_between"], out["ms_within"] = ms_between, ms_within
    if ms_within is not None:
        out["checkpoint"] = ms_within
        out["checkpoint_ci"] = checkpoint_interval(ms_within, seeds * (k - 1), level)
    else:
        out["checkpoint"], out["checkpoint_ci"] = None, None
    if ms_between is None:
        out["seed"], out["seed_ci"] = None, None
    elif ms_within is None:  # one checkpoint per run: the seed component also holds the checkpoint choice
        out["seed"] = ms_between
        out["seed_ci"] = checkpoint_interval(ms_between, seeds - 1, level)
    else:
        out["seed"] = max(0.0, (ms_between - ms_within) / k)
        out["seed_ci"] = seed_interval(ms_between, ms_within, seeds - 1, seeds * (k - 1), k, level)
    return out


def bootstrap_mious(runs: list[RunScores], weights: torch.Tensor) -> np.ndarray | None:
    """Return mIoU points [runs, resamples] of each run's per-image matrices under the same resamples."""
    if any(r.per_image is None for r in runs):
        return None
    return np.stack([100 * nanmean(resampled_class_iou(r.per_image, weights)).numpy() for r in runs])


def decompose(runs: list[RunScores], boot: np.ndarray | None, level: float = LEVEL) -> dict:
    """Return one cell's variance decomposition: seed, checkpoint and test-sampling components, with shares."""
    k = min(len(r.checkpoints) for r in runs)
    values = np.array([r.checkpoints[:k] for r in runs])
    nested = nested_components(values, level)
    per_run = None if boot is None else np.nanvar(boot, axis=1, ddof=1)
    test = None if per_run is None else float(np.mean(per_run))
    parts = {"seed": nested["seed"], "checkpoint": nested["checkpoint"], "test_sampling": test}
    total = sum(v for v in parts.values() if v is not None) or None
    seed_note = "seed" if k > 1 else "seed (with the checkpoint choice: last_k 1 does not separate them)"
    return {
        "runs": len(runs),
        "checkpoints_per_run": k,
        "mean_miou": nested["mean"],
        "reported_miou": float(np.mean([r.checkpoints[0] for r in runs])),
        "components": {
            "seed": {**_component(parts["seed"], nested["seed_ci"], total), "what": seed_note},
            "checkpoint": {
                **_component(parts["checkpoint"], nested["checkpoint_ci"], total),
                "what": f"checkpoint among the last {k}",
            },
            "test_sampling": {
                **_component(test, None, total),
                "what": "test images (bootstrap)",
                "runs_range": None if per_run is None else [float(per_run.min()), float(per_run.max())],
            },
        },
        "total_variance": total,
        "total_std": None if total is None else float(np.sqrt(total)),
        "ms_between": nested["ms_between"],
        "ms_within": nested["ms_within"],
    }


def detectable(parts_a: dict, parts_b: dict, runs_a: int, runs_b: int, test_var: float | None) -> dict:
    """Return sd(D), the 95% significance threshold and the 80%-power detectable difference of two cells."""
    training = []
    for parts, runs in ((parts_a, runs_a), (parts_b, runs_b)):
        seed = parts["seed"]["variance"]
        if seed is None:
            return {"sd": None, "threshold": None, "detectable": None, "why": "needs 2 or more seeds per cell"}
        training.append((seed + (parts["checkpoint"]["variance"] or 0.0)) / runs)
    if test_var is None:
        return {"sd": None, "threshold": None, "detectable": None, "why": "the cells were tested on different images"}
    sd = float(np.sqrt(sum(training) + test_var))
    z = norm.ppf(1 - (1 - LEVEL) / 2)
    return {
        "sd": sd,
        "threshold": float(z * sd),
        "detectable": float((z + norm.ppf(POWER)) * sd),
        "test_variance": test_var,
        "why": None,
    }


def variance_study(
    cells: dict[str, list[RunScores]], resamples: int = 1000, seed: int = 0, level: float = LEVEL
) -> dict:
    """Return variance.json: the decomposition of every cell and the detectable difference of every pair."""
    measured = [r for runs in cells.values() for r in runs if r.per_image is not None]
    same = (
        bool(measured) and len(measured) == sum(map(len, cells.values())) and len({r.image_ids for r in measured}) == 1
    )
    weights = resample_weights(measured[0].per_image.shape[0], resamples, seed) if same else None
    boots = {name: None if weights is None else bootstrap_mious(runs, weights) for name, runs in cells.items()}
    out_cells = {name: decompose(runs, boots[name], level) for name, runs in cells.items()}
    pairs = []
    for a, b in itertools.combinations(cells, 2):
        test_var = None
        if boots[a] is not None and boots[b] is not None:
            test_var = float(np.nanvar(boots[a].mean(0) - boots[b].mean(0), ddof=1))
        pairs.append(
            {
                "a": a,
                "b": b,
                "difference": out_cells[a]["reported_miou"] - out_cells[b]["reported_miou"],
                **detectable(
                    out_cells[a]["components"], out_cells[b]["components"], len(cells[a]), len(cells[b]), test_var
                ),
            }
        )
    known = [p["detectable"] for p in pairs if p["detectable"] is not None]
    return {
        "method": METHOD,
        "level": level,
        "power": POWER,
        "resamples": resamples,
        "seed": seed,
        "same_images": weights is not None,
        "cells": out_cells,
        "pairs": pairs,
        "detectable_difference": {
            "median": float(np.median(known)) if known else None,
            "min": float(min(known)) if known else None,
            "max": float(max(known)) if known else None,
            "pairs": len(known),
        },
    }
