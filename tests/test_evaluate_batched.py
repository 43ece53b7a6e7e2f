"""Faster, leaner evaluation: batches (same-size groups, or padded), autocast, compact per-image statistics
(and old dense files still read), and `seglab test` sharded over 2 gloo processes equal to one."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import torch
from eval_fixtures import FakeDataset, OracleModel, random_case
from test_ddp import torchrun

from seglab import metrics
from seglab.cli import main
from seglab.compare import compare, load_evaluation
from seglab.data import build_dataset
from seglab.engine import evaluate as ev
from seglab.engine.inference import predict_classes, predict_logits
from seglab.models import build_model
from seglab.runs import EvalDir


def mixed_sizes() -> FakeDataset:
    """Seven images of three sizes, interleaved, with instances (planted predictions: see eval_fixtures)."""
    sizes = [(40, 56), (24, 32), (40, 56), (33, 45), (40, 56), (24, 32), (33, 45)]
    parts = [random_case(seed, n=1, size=size, error_rates=(0.05 * seed,)) for seed, size in enumerate(sizes)]
    return FakeDataset([p.labels[0] for p in parts], [p.predictions[0] for p in parts], [p.instances[0] for p in parts])


def assert_same_result(a: ev.EvalResult, b: ev.EvalResult) -> None:
    assert a.image_ids == b.image_ids
    assert torch.equal(a.per_image, b.per_image) and torch.equal(a.cm, b.cm) and torch.equal(a.boundary, b.boundary)
    assert (a.objects is None and b.objects is None) or torch.equal(a.objects, b.objects)
    assert [(m, i) for m, i, _ in a.worst] == [(m, i) for m, i, _ in b.worst]
    for (_, _, p), (_, _, q) in zip(a.worst, b.worst, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(("batch_size", "pad"), [(3, False), (4, True), (16, False)])
def test_batched_evaluation_equals_one_image_at_a_time(batch_size, pad):
    data = mixed_sizes()
    one = ev.evaluate(OracleModel(3, output_stride=16), data, gallery=3)
    model = OracleModel(3, output_stride=16)
    batched = ev.evaluate(model, data, gallery=3, batch_size=batch_size, pad_batches=pad)
    assert_same_result(batched, one)
    assert len(model.shapes) < len(one.image_ids)  # fewer forward passes: batches did form
    if pad:  # padded batches: the largest image of the batch, rounded up to the stride
        assert model.shapes[0] == (48, 64)


class TwoSizes:
    """The embedded set at 32 and 48 px, alternating: a real dataset of mixed image sizes."""

    def __init__(self) -> None:
        self.parts = [build_dataset("synthetic", None, "val", length=3, size=s) for s in (32, 48)]
        self.classes, self.palette = self.parts[0].classes, self.parts[0].palette
        self.num_classes, self.ignore_index, self.has_instances = 6, 255, True

    def __len__(self) -> int:
        return 6

    def load(self, i: int):
        return self.parts[i % 2].load(i // 2)

    def load_instances(self, i: int):
        return self.parts[i % 2].load_instances(i // 2)

    def sample_id(self, i: int) -> str:
        return f"{i % 2}-{self.parts[i % 2].sample_id(i // 2)}"


def test_batched_evaluation_of_a_network_equals_one_image_at_a_time():
    torch.manual_seed(0)
    model = build_model("lcnet_050", "fcn8s", 6).eval()
    with torch.no_grad():  # the score layers start at zero; give the net varied predictions
        for p in model.decoder.parameters():
            p.normal_()
    data = TwoSizes()
    one = ev.evaluate(model, data, gallery=2)
    assert_same_result(ev.evaluate(model, data, gallery=2, batch_size=4), one)
    assert int(one.cm.sum()) == 3 * (32 * 32 + 48 * 48)
    padded = ev.evaluate(model, data, gallery=2, batch_size=4, pad_batches=True)
    assert padded.image_ids == one.image_ids and int(padded.cm.sum()) == int(one.cm.sum())  # padding is not counted


@pytest.mark.parametrize("options", [{}, {"scales": (0.75, 1.0), "flip": True}, {"window": 24, "window_step": 16}])
def test_predict_classes_is_the_argmax_of_predict_logits(options):
    torch.manual_seed(1)
    model = build_model("lcnet_050", "fcn8s", 6).eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.normal_()
    images = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8)
    classes = predict_classes(model, images, **options)
    assert classes.dtype == torch.int64 and classes.shape == (2, 40, 56)
    assert torch.equal(classes, predict_logits(model, images, **options).argmax(1))


def test_batches_group_one_size_and_bound_what_waits():
    def sample(i, h):
        return (i, torch.zeros(3, h, 8), None, None)

    heights = [8, 9, 8, 10, 11, 12, 8, 9]
    groups = [[s[0] for s in b] for b in ev.batches([sample(i, h) for i, h in enumerate(heights)], 2, pad=False)]
    # 8s pair up at once; with 2 x PENDING_BATCHES images waiting, the fullest group goes anyway
    assert groups[0] == [0, 2] and sorted(i for g in groups for i in g) == list(range(8))
    assert all(len({heights[i] for i in g}) == 1 for g in groups)
    padded = [[s[0] for s in b] for b in ev.batches([sample(i, h) for i, h in enumerate(heights)], 3, pad=True)]
    assert padded == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_autocast_reaches_the_model():
    seen = []

    class Recording(OracleModel):
        def forward(self, x):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return super().forward(x)

    ev.evaluate(Recording(3), random_case(0), amp_dtype=torch.bfloat16, gallery=0)
    ev.evaluate(Recording(3), random_case(0), gallery=0)
    assert seen == [(True, torch.bfloat16)] * 4 + [(False, torch.get_autocast_dtype("cpu"))] * 4


def test_per_image_statistics_of_2000_images_and_150_classes_fit_in_50_mb(tmp_path):
    """ADE20K val: 2,000 images of about 512x683 px with a dozen of the 150 classes each."""
    rng = np.random.default_rng(0)
    n, c, pixels = 2000, 150, 512 * 683
    counts = np.zeros((n, 3, c), dtype=np.int64)
    for i in range(n):
        present = rng.choice(c, 12, replace=False)
        label = rng.multinomial(pixels, rng.dirichlet(np.ones(12)))
        pred = rng.multinomial(pixels, rng.dirichlet(np.ones(12)))
        counts[i, 1, present], counts[i, 2, present] = label, pred
        counts[i, 0, present] = (np.minimum(label, pred) * rng.uniform(0.3, 1.0, 12)).astype(np.int64)
    objects = torch.from_numpy(rng.integers(0, pixels, (30000, 4)))
    result = ev.EvalResult(
        tuple(f"class{k}" for k in range(c)),
        255,
        [f"ADE_val_{i:08d}" for i in range(n)],
        torch.from_numpy(counts),
        torch.zeros(c, c, dtype=torch.int64),
        objects,
        torch.zeros(2, c, dtype=torch.int64),
        0.02,
    )
    evaluation = EvalDir(tmp_path)
    evaluation.write({"miou": 0.0}, result.arrays())
    size = evaluation.per_image.stat().st_size
    assert size < 50e6, size
    assert n * c * c * 8 > 7 * 50e6  # the dense int64 matrices would take 360 MB
    back = evaluation.read_per_image()
    assert np.array_equal(back["per_image_counts"], counts) and back["per_image_counts"].dtype == np.int64
    assert back["image_ids"][1999] == "ADE_val_00001999" and np.array_equal(back["objects"], objects.numpy())


def test_old_dense_per_image_files_are_still_read_and_compared(tmp_path):
    data = random_case(9, n=10)
    result = ev.evaluate(OracleModel(3), data, gallery=0)
    dense = torch.stack(
        [
            metrics.per_image_confusion(p[None], t[None], 3, 255)[0]
            for p, t in zip(data.predictions, data.labels, strict=True)
        ]
    )
    summary = ev.summarize(result, bootstrap=50)
    old = EvalDir(tmp_path / "old")
    old.path.mkdir()
    arrays = {**result.arrays(), "per_image_cm": dense.numpy()}
    del arrays["per_image_counts"]
    np.savez_compressed(old.per_image, **arrays)  # what seglab 0.2 wrote
    old.metrics.write_text(json.dumps(summary))
    assert np.array_equal(old.read_per_image()["per_image_counts"], result.per_image.numpy())
    new = EvalDir(tmp_path / "new")
    new.write(summary, result.arrays())
    outcome = compare([load_evaluation(old.path, "val"), load_evaluation(new.path, "val")], resamples=50)
    assert outcome["paired_bootstrap"][0]["diff"] == 0.0 and outcome["paired_bootstrap"][0]["ci"] == [0.0, 0.0]


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_seglab_test_on_two_processes_gives_the_one_process_result(tmp_path):
    train = shlex.split(
        "train --basenet lcnet_050 --decoder fcn8s --pretrained none --device cpu --dataset-options length=8 "
        "size=32 --crop 32 --batch-size 2 --iters 3 --learnrate 0.1 --eval-every 0 --workers 0"
    )
    assert main([*train, "--runs-root", str(tmp_path), "--run-name", "r"]) == 0
    test = ["test", str(tmp_path / "r"), *shlex.split("--limit 7 --batch-size 2 --workers 0 --bootstrap 200")]
    result = torchrun(["-m", "seglab.cli", *test, "--out", str(tmp_path / "two")], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("wrote ") == 1  # rank 0 writes and reports
    assert "on 7 images" in result.stdout and "2 x cpu" in result.stdout
    assert main([*test, "--out", str(tmp_path / "one")]) == 0
    two, one = EvalDir(tmp_path / "two"), EvalDir(tmp_path / "one")
    for key, value in one.read_per_image().items():
        assert np.array_equal(two.read_per_image()[key], value), key
    a, b = two.read_summary(), one.read_summary()
    for key in ("miou", "miou_ci", "per_class_iou_ci", "confusion_matrix", "boundary", "sizes", "worst_images"):
        assert a[key] == b[key], key
    assert a["num_images"] == 7
