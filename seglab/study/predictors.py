"""What predicts a good basenet: cheap per-basenet predictors against the fine-tuned mIoU.

For each group of runs that differ only by basenet (one decoder, one grid point), each predictor (ImageNet
top-1 of the starting weights, basenet parameters, basenet GFLOPs, linear-probe mIoU) is rank-correlated
with the runs' mIoU by Spearman's rho (`scipy.stats.spearmanr`, ties averaged), over runs (every seed of
every basenet), with a 95% percentile bootstrap interval over runs (resampling runs with replacement;
resamples where either variable is constant are left out and counted). The sentence the study report
prints is built from these numbers: which predictor ranks the runs best, and whether ImageNet accuracy's
interval excludes zero.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

PREDICTORS = {
    "imagenet_top1": "ImageNet top-1",
    "basenet_params": "basenet params",
    "basenet_gflops": "basenet GFLOPs",
    "probe_miou": "linear probe mIoU",
}
"""Row key -> name in the report of each predictor."""
LEVEL = 0.95


def spearman(rows: list[dict], x: str, y: str = "miou") -> dict:
    """Return Spearman's rank correlation of column `y` with `x` over rows where both are known."""
    pairs = [(r[x], r[y]) for r in rows if r.get(x) is not None and r.get(y) is not None]
    if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return {"n": len(pairs), "rho": None, "p": None}
    result = spearmanr([p[0] for p in pairs], [p[1] for p in pairs])
    return {"n": len(pairs), "rho": float(result.statistic), "p": float(result.pvalue)}


def bootstrap_spearman(
    rows: list[dict], x: str, y: str = "miou", resamples: int = 1000, seed: int = 0, level: float = LEVEL
) -> dict:
    """Return `spearman` plus a percentile bootstrap interval over rows and how many resamples were usable."""
    out = spearman(rows, x, y)
    pairs = np.array([(r[x], r[y]) for r in rows if r.get(x) is not None and r.get(y) is not None], dtype=float)
    out.update({"ci": None, "resamples": resamples, "usable": 0, "basenets": len({r["basenet"] for r in rows})})
    if out["rho"] is None:
        return out
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        sample = pairs[rng.integers(0, len(pairs), len(pairs))]
        if np.ptp(sample[:, 0]) == 0 or np.ptp(sample[:, 1]) == 0:
            continue
        values.append(spearmanr(sample[:, 0], sample[:, 1]).statistic)
    out["usable"] = len(values)
    if values:
        tail = (1 - level) / 2 * 100
        out["ci"] = [float(v) for v in np.percentile(values, [tail, 100 - tail])]
    return out


def correlation_groups(rows: list[dict], resamples: int = 1000, seed: int = 0) -> dict:
    """Return {group: {predictor: correlation}} for each decoder and grid point (runs differing by basenet)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        name = row["decoder"] + (f", {row['grid']}" if row.get("grid") else "")
        groups.setdefault(name, []).append(row)
    return {
        name: {key: bootstrap_spearman(group, key, resamples=resamples, seed=seed) for key in PREDICTORS}
        for name, group in groups.items()
    }


def rho_text(c: dict) -> str:
    """Return rho with its interval as text, or why there is none."""
    if c["rho"] is None:
        return f"n/a (n={c['n']}; needs 3 or more runs and 2 or more distinct values)"
    ci = "" if c["ci"] is None else f", 95% CI {c['ci'][0]:+.2f} to {c['ci'][1]:+.2f}"
    return f"rho {c['rho']:+.2f}{ci}, n={c['n']}"


def answer(group: str, correlations: dict) -> str:
    """Return the sentence that answers "what predicts a good basenet?" for one group, from its numbers."""
    known = {k: c for k, c in correlations.items() if c["rho"] is not None}
    if not known:
        return (
            f"{group}: no predictor can be ranked against mIoU (each needs 3 or more runs with 2 or more "
            "distinct values); add basenets or seeds."
        )
    strongest = max(abs(c["rho"]) for c in known.values())  # a strong negative rank correlation predicts too
    best = [k for k, c in known.items() if abs(c["rho"]) > strongest - 1e-9]
    c = known[best[0]]
    basenets = c["basenets"]
    text = f"{group}: over {c['n']} runs of {basenets} basenets, "
    if len(best) == 1:
        text += f"the best predictor of fine-tuned mIoU is the {PREDICTORS[best[0]]} ({rho_text(c)})"
    else:  # predictors that order the basenets alike (or exactly reversed) rank the runs alike
        names = [PREDICTORS[k] + (" (reversed)" if known[k]["rho"] * c["rho"] < 0 else "") for k in best]
        text += f"{', '.join(names[:-1])} and {names[-1]} predict fine-tuned mIoU equally well ({rho_text(c)}): "
        text += "they order these basenets the same way"
    top1 = correlations["imagenet_top1"]
    if "imagenet_top1" not in best:
        if top1["rho"] is None:
            text += "; ImageNet top-1 does not apply (no run started from ImageNet weights seglab has a figure for)"
        else:
            text += f"; ImageNet top-1 gives {rho_text(top1)}"
    if top1["rho"] is not None and top1["ci"] is not None:
        excludes = top1["ci"][0] > 0 or top1["ci"][1] < 0
        text += (
            ", so ImageNet accuracy does predict segmentation accuracy here (its interval excludes 0)"
            if excludes
            else ", so ImageNet accuracy is not a reliable predictor here (its interval includes 0)"
        )
    if basenets < 3:
        text += f"; with {basenets} basenets the ranking rests on {basenets} distinct predictor values"
    return text + "."
