"""Evaluation: the `evaluate` loop (per-image confusion matrices, object and boundary statistics) and
`seglab test`, which evaluates one or several checkpoints of a run and writes metrics and a report.

Everything the report needs is kept per image, so confidence intervals, comparisons between runs
and the worst-image gallery need no second pass over the data.
"""

from __future__ import annotations

import argparse
import heapq
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from seglab import metrics
from seglab.engine.inference import add_tta_arguments, predict_logits

PER_IMAGE_FILE = "per_image_cm.npz"
DEFAULT_BOOTSTRAP = 1000
DEFAULT_GALLERY = 8


@dataclass
class EvalResult:
    """What one pass over a dataset keeps: per-image matrices, object records, boundary counts, worst images."""

    class_names: tuple[str, ...]
    ignore_index: int
    image_ids: list[str]
    per_image_cm: Tensor  # int64 [N, C, C], rows = label, cols = prediction
    objects: Tensor | None  # int64 [K, 4]: image, class, area, correct pixels; None without instance masks
    boundary: Tensor  # int64 [2, C]: band intersection and union per class
    dilation_ratio: float
    worst: list[tuple[float, int, Tensor]] = field(default_factory=list)  # (image mIoU, index, prediction)

    @property
    def cm(self) -> Tensor:
        """Return the dataset's confusion matrix [C, C]."""
        return self.per_image_cm.sum(0)


class _Samples(torch.utils.data.Dataset):
    """Yields (index, image, label, instances or None) so loading can run in DataLoader workers."""

    def __init__(self, dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Tensor, Tensor, Tensor | None]:
        index = self.indices[i]
        image, label = self.dataset.load(index)
        instances = self.dataset.load_instances(index) if self.dataset.has_instances else None
        return index, image, label, instances


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window: int | None = None,
    stride: int | None = None,
    limit: int | None = None,
    gallery: int = DEFAULT_GALLERY,
    dilation_ratio: float = metrics.DEFAULT_DILATION_RATIO,
    workers: int = 0,
) -> EvalResult:
    """Return an EvalResult of `model` on `dataset` (a SegmentationDataset), one image at a time.

    `limit` evaluates the first N images; `gallery` keeps the predictions of that many images with
    the lowest per-image mIoU. Inference options are those of `predict_logits`.
    """
    model.eval()
    device = next(model.parameters()).device
    num_classes = dataset.num_classes
    if getattr(model, "num_classes", num_classes) != num_classes:
        raise ValueError(f"the model predicts {model.num_classes} classes but the dataset has {num_classes}")
    count = len(dataset) if limit is None else min(limit, len(dataset))
    loader = torch.utils.data.DataLoader(_Samples(dataset, range(count)), batch_size=None,
                                         num_workers=workers)
    cms, ids, objects = [], [], []
    boundary = torch.zeros(2, num_classes, dtype=torch.int64, device=device)
    worst: list[tuple[float, int, Tensor]] = []
    for index, image, label, instances in tqdm(loader, total=count, desc="evaluate", unit="img",
                                               disable=not sys.stderr.isatty()):
        probs = predict_logits(model, image[None], scales=scales, flip=flip, window=window, stride=stride)
        pred = probs.argmax(1)
        target = label.to(device)[None]
        try:
            cm = metrics.per_image_confusion(pred, target, num_classes, dataset.ignore_index)
        except metrics.OutOfRangeError as err:
            raise metrics.OutOfRangeError(f"{dataset.sample_id(index)}: {err}") from err
        cms.append(cm[0].cpu())
        ids.append(dataset.sample_id(index))
        boundary += metrics.boundary_stats(pred, target, num_classes, dataset.ignore_index, dilation_ratio)
        if instances is not None:
            rows = metrics.instance_records(instances.to(device), target[0], pred[0], num_classes,
                                            dataset.ignore_index).cpu()
            objects.append(torch.cat([torch.full((rows.shape[0], 1), index), rows], dim=1))
        image_miou = float(metrics.mean_iou(cm[0].cpu()))
        if gallery > 0 and image_miou == image_miou:
            item = (-image_miou, index, pred[0].to("cpu", torch.uint8))
            if len(worst) < gallery:
                heapq.heappush(worst, item)
            elif item[:2] > worst[0][:2]:
                heapq.heapreplace(worst, item)
    if not cms:
        raise ValueError(f"nothing to evaluate: the dataset has {len(dataset)} images and limit is {limit}")
    worst_sorted = sorted(((-neg, index, pred) for neg, index, pred in worst), key=lambda t: (t[0], t[1]))
    return EvalResult(
        class_names=tuple(dataset.classes),
        ignore_index=dataset.ignore_index,
        image_ids=ids,
        per_image_cm=torch.stack(cms),
        objects=torch.cat(objects) if dataset.has_instances else None,
        boundary=boundary.cpu(),
        dilation_ratio=dilation_ratio,
        worst=worst_sorted,
    )


def summarize(result: EvalResult, *, bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0,
              size_bins: Sequence[int] = metrics.COCO_AREA_BINS, top_pairs: int = 10) -> dict:
    """Return the JSON-ready metrics of an EvalResult: point estimates, bootstrap CI, sizes, boundary."""
    names = list(result.class_names)
    cm = result.cm
    out = metrics.segmentation_metrics(cm, names)
    boot = metrics.bootstrap_miou(result.per_image_cm, resamples=bootstrap, seed=seed)
    out["miou_ci"] = boot["miou_ci"]
    out["per_class_iou_ci"] = dict(zip(names, boot["per_class_ci"], strict=True))
    out["bootstrap"] = {k: boot[k] for k in ("resamples", "level", "seed", "miou_std")}
    inter, union = result.boundary
    band_iou = metrics.divide(inter, union)
    out["boundary"] = {
        "dilation_ratio": result.dilation_ratio,
        "miou": _scalar(metrics.nanmean(band_iou)),
        "per_class_iou": {n: _scalar(v) for n, v in zip(names, band_iou, strict=True)},
    }
    out["sizes"] = (None if result.objects is None
                    else metrics.size_metrics(result.objects[:, 1:], cm, names, size_bins))
    out["top_confusions"] = metrics.top_confusions(cm, names, top_pairs)
    per_image = metrics.mean_iou(result.per_image_cm)
    out["worst_images"] = [{"id": result.image_ids[i], "index": i, "miou": m}
                           for m, i, _ in result.worst]
    out["num_images"] = len(result.image_ids)
    out["per_image_miou_mean"] = _scalar(metrics.nanmean(per_image))
    out["ignore_index"] = result.ignore_index
    out["confusion_matrix"] = cm.tolist()
    return out


def save_eval(out_dir: Path, result: EvalResult, summary: dict) -> None:
    """Write metrics.json and the per-image matrices (per_image_cm.npz, for bootstrap and compare)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    arrays = {"per_image_cm": result.per_image_cm.numpy(), "image_ids": np.array(result.image_ids),
              "class_names": np.array(result.class_names)}
    if result.objects is not None:
        arrays["objects"] = result.objects.numpy()
    np.savez_compressed(out_dir / PER_IMAGE_FILE, **arrays)


def load_per_image(eval_dir: Path) -> tuple[Tensor, list[str], list[str]]:
    """Return (per-image confusion matrices [N, C, C], image ids, class names) saved by `seglab test`."""
    path = eval_dir / PER_IMAGE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `seglab test` first (it writes {PER_IMAGE_FILE})")
    with np.load(path, allow_pickle=False) as data:
        return (torch.from_numpy(data["per_image_cm"]), [str(i) for i in data["image_ids"]],
                [str(c) for c in data["class_names"]])


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `seglab test`."""
    parser.add_argument("target", type=Path, help="run folder (uses checkpoints/last.pt) or a checkpoint file")
    parser.add_argument("--split", default="val", help="dataset split to evaluate (default val)")
    parser.add_argument("--out", type=Path, help="output folder (default RUN_DIR/eval/NAME)")
    parser.add_argument("--name", help="name of the evaluation folder (default: split plus test options, "
                        "e.g. val-ms0.5,1,1.5-flip)")
    add_tta_arguments(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--checkpoints", help="comma-separated checkpoints of the run to evaluate and compare, "
                       "e.g. last,step_2000,step_3000 (the first gets the full report)")
    group.add_argument("--last-k", type=int, metavar="K", help="evaluate the K newest step checkpoints")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                        help=f"bootstrap resamples over images for the CI (default {DEFAULT_BOOTSTRAP})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    parser.add_argument("--gallery", type=int, default=DEFAULT_GALLERY, metavar="K",
                        help=f"worst images shown in the report (default {DEFAULT_GALLERY})")
    parser.add_argument("--size-bins", type=_ints, default=metrics.COCO_AREA_BINS, metavar="S,M",
                        help="object area edges in pixels small/medium and medium/large (default 1024,9216)")
    parser.add_argument("--boundary-ratio", type=float, default=metrics.DEFAULT_DILATION_RATIO,
                        help="Boundary IoU band width as a share of the image diagonal (default 0.02)")
    parser.add_argument("--dataset", help="dataset name (default: the run's)")
    parser.add_argument("--data-root", help="dataset root (default: the run's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device (default cuda when available)")
    parser.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N images")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes (default 2)")


def _step_checkpoints(run_dir: Path) -> dict[int, Path]:
    found = {}
    for path in (run_dir / "checkpoints").glob("step_*.pt"):
        match = re.fullmatch(r"step_(\d+)\.pt", path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def resolve_checkpoints(target: Path, names: str | None, last_k: int | None) -> list[tuple[str, Path]]:
    """Return (name, path) of each checkpoint to evaluate, the one for the full report first."""
    if not target.exists():
        raise FileNotFoundError(f"{target} does not exist: give a run folder or a checkpoint file")
    if names is None and last_k is None:
        if target.is_dir():
            return [("last", target)]
        return [(target.stem, target)]
    if not target.is_dir():
        raise ValueError(f"--checkpoints and --last-k need a run folder, got the file {target}")
    steps = _step_checkpoints(target)
    listing = ", ".join(f"step_{s}" for s in sorted(steps)) or "none"
    if last_k is not None:
        if last_k < 1 or len(steps) < last_k:
            raise ValueError(f"--last-k {last_k}: {target / 'checkpoints'} holds {len(steps)} step "
                             f"checkpoints ({listing})")
        return [(f"step_{s}", steps[s]) for s in sorted(steps, reverse=True)[:last_k]]
    chosen = []
    for token in (t.strip() for t in names.split(",") if t.strip()):
        if token == "last":
            path = target / "checkpoints" / "last.pt"
            if not path.is_file():
                raise FileNotFoundError(f"--checkpoints last: {path} is missing")
            chosen.append(("last", path))
            continue
        match = re.fullmatch(r"(?:step_)?(\d+)", token)
        if match is None or int(match.group(1)) not in steps:
            raise ValueError(f"--checkpoints: no checkpoint {token!r} in {target / 'checkpoints'}; "
                             f"it has last and {listing}")
        step = int(match.group(1))
        chosen.append((f"step_{step}", steps[step]))
    return chosen


def default_name(args: argparse.Namespace, single: tuple[str, Path] | None) -> str:
    """Return the evaluation folder name: split, then the test options and a non-default checkpoint."""
    parts = [args.split]
    if tuple(args.scales) != (1.0,):
        parts.append("ms" + ",".join(f"{s:g}" for s in args.scales))
    if args.flip:
        parts.append("flip")
    if args.sliding_window:
        parts.append(f"sw{args.sliding_window}")
    if single is not None and single[1].is_file() and single[0] != "last":
        parts.append(single[0])
    return "-".join(parts)


def _output_dir(args: argparse.Namespace, checkpoints: list[tuple[str, Path]]) -> Path:
    if args.out is not None:
        return args.out
    target = args.target
    run_dir = target if target.is_dir() else target.parent.parent
    if target.is_file() and target.parent.name != "checkpoints":
        raise ValueError(f"{target} is not inside a run's checkpoints/ folder: give --out DIR")
    name = args.name or default_name(args, checkpoints[0] if len(checkpoints) == 1 else None)
    return run_dir / "eval" / name


def _model_info(model: nn.Module, runargs: dict) -> dict:
    """Return FE, decoder, parameters and GFLOPs (at the run's training crop, else 512x512)."""
    from seglab.models.summary import model_complexity

    crop = runargs.get("crop") or [512]
    crop = [crop] if isinstance(crop, int) else list(crop)
    size = (crop[0], crop[-1])
    complexity = model_complexity(model, size=size)
    return {"basenet": runargs.get("basenet"), "decoder": runargs.get("decoder"),
            "params": int(complexity["params"]), "gflops": float(complexity["gflops"]),
            "gflops_size": list(size)}


def main(args: argparse.Namespace) -> int:
    """Run `seglab test`: evaluate, write metrics.json, per_image_cm.npz, report.html and report.md."""
    from seglab.data import build_dataset
    from seglab.engine.checkpoint import load_model
    from seglab.report import gallery_items, write_report

    checkpoints = resolve_checkpoints(args.target, args.checkpoints, args.last_k)
    out_dir = _output_dir(args, checkpoints)
    model, runargs = load_model(checkpoints[0][1], map_location=args.device)
    dataset_name = args.dataset or runargs["dataset"]
    # the run's dataset options (e.g. synthetic length/size) apply only to the run's own dataset
    options = runargs.get("dataset_options") or {} if args.dataset in (None, runargs["dataset"]) else {}
    dataset = build_dataset(dataset_name, args.data_root or runargs.get("data_root") or None, args.split,
                            **options)
    info = _model_info(model, runargs)
    test_options = {"scales": list(args.scales), "flip": args.flip, "window": args.sliding_window,
                    "stride": args.stride}
    spread, summary, result = [], {}, None
    for i, (name, path) in enumerate(checkpoints):
        if i > 0:
            model, runargs = load_model(path, map_location=args.device)
        res = evaluate(model, dataset, scales=args.scales, flip=args.flip, window=args.sliding_window,
                       stride=args.stride, limit=args.limit, gallery=args.gallery if i == 0 else 0,
                       dilation_ratio=args.boundary_ratio, workers=args.workers)
        if i == 0:
            result = res
            summary = summarize(res, bootstrap=args.bootstrap, seed=args.seed, size_bins=args.size_bins)
            entry = {"miou": summary["miou"], "miou_ci": summary["miou_ci"]}
        else:
            boot = metrics.bootstrap_miou(res.per_image_cm, resamples=args.bootstrap, seed=args.seed)
            entry = {"miou": _scalar(metrics.pooled_miou(res.per_image_cm)), "miou_ci": boot["miou_ci"]}
        spread.append({"checkpoint": name, "step": runargs.get("step"), **entry})
        low, high = entry["miou_ci"]
        print(f"{name}: mIoU {100 * entry['miou']:.2f} (95% CI {100 * low:.2f}-{100 * high:.2f}) on "
              f"{len(res.image_ids)} images of {dataset_name} {args.split}")
    summary["checkpoint_spread"] = checkpoint_spread(spread) if len(spread) > 1 else None
    summary["model"] = info
    summary["dataset"] = {"name": dataset_name, "split": args.split}
    summary["test_options"] = test_options
    save_eval(out_dir, result, summary)
    html, md = write_report(out_dir, summary, gallery_items(dataset, result), dataset.palette)
    print(f"wrote {out_dir / 'metrics.json'}, {md} and {html}")
    return 0


def checkpoint_spread(entries: list[dict]) -> dict:
    """Return the per-checkpoint mIoUs with their mean, standard deviation, min and max."""
    values = torch.tensor([e["miou"] for e in entries], dtype=torch.float64)
    return {"checkpoints": entries, "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "max": float(values.max())}


def _scalar(value: Tensor | float) -> float | None:
    v = float(value)
    return None if v != v else v
