"""Small stand-ins for the evaluation tests: a dataset following the SegmentationDataset contract and an
"oracle" model whose prediction is read off the image's red channel, so tests plant exact errors."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

LEVEL = 40  # red value of class c is c * LEVEL


class Stride(nn.Module):
    """Stands in for the FE: only its output stride matters to inference."""

    def __init__(self, output_stride: int) -> None:
        super().__init__()
        self.output_stride = output_stride


class OracleModel(nn.Module):
    """Predicts class round(red / LEVEL) at every pixel; refuses inputs not padded to its stride."""

    def __init__(self, num_classes: int, output_stride: int = 32) -> None:
        super().__init__()
        self.basenet = Stride(output_stride)
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.shapes: list[tuple[int, int]] = []

    def normalize(self, images: Tensor) -> Tensor:
        return images.float() / 255.0

    def forward(self, x: Tensor) -> Tensor:
        stride = self.basenet.output_stride
        if x.shape[-2] % stride or x.shape[-1] % stride:
            raise AssertionError(f"input {tuple(x.shape[-2:])} is not padded to a multiple of {stride}")
        self.shapes.append(tuple(x.shape[-2:]))
        red = x[:, :1] * 255.0 / LEVEL
        centres = torch.arange(self.num_classes, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return -self.scale * (red - centres) ** 2


class FakeDataset:
    """In-memory dataset with the SegmentationDataset contract; `errors[i]` is the prediction of image i."""

    def __init__(
        self,
        labels: list[Tensor],
        predictions: list[Tensor],
        instances: list[Tensor] | None,
        classes: tuple[str, ...] = ("bg", "a", "b"),
        ignore_index: int = 255,
    ) -> None:
        self.classes = classes
        self.num_classes = len(classes)
        self.palette = np.array(
            [(0, 0, 0), (200, 30, 30), (30, 200, 30), (30, 30, 200)][: len(classes)], dtype=np.uint8
        )
        self.ignore_index = ignore_index
        self.labels = labels
        self.predictions = predictions
        self.instances = instances
        self.has_instances = instances is not None

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, i: int) -> tuple[Tensor, Tensor]:
        red = (self.predictions[i].clamp(max=self.num_classes - 1) * LEVEL).to(torch.uint8)
        image = torch.stack([red, torch.full_like(red, 90), torch.full_like(red, 120)])
        return image, self.labels[i].to(torch.uint8)

    def load_instances(self, i: int) -> Tensor | None:
        return None if self.instances is None else self.instances[i]

    def sample_id(self, i: int) -> str:
        return f"img{i:03d}"


def random_case(
    seed: int,
    n: int = 4,
    size: tuple[int, int] = (40, 56),
    num_classes: int = 3,
    error_rates: tuple[float, ...] = (0.05, 0.4, 0.1, 0.2),
) -> FakeDataset:
    """Return a FakeDataset of rectangles (one instance each) with a share of pixels mispredicted per image."""
    g = torch.Generator().manual_seed(seed)
    labels, preds, insts = [], [], []
    for i in range(n):
        label = torch.zeros(size, dtype=torch.long)
        inst = torch.zeros(size, dtype=torch.int32)
        for k in range(1, 4):
            top = int(torch.randint(0, size[0] - 8, (1,), generator=g))
            left = int(torch.randint(0, size[1] - 8, (1,), generator=g))
            h, w = (int(v) for v in torch.randint(3, 14, (2,), generator=g))
            label[top : top + h, left : left + w] = 1 + k % (num_classes - 1)
            inst[top : top + h, left : left + w] = k
        label[0, :5] = 255
        wrong = torch.rand(size, generator=g) < error_rates[i % len(error_rates)]
        pred = torch.where(wrong, (label + 1) % num_classes, label)
        pred[label == 255] = 0
        labels.append(label)
        preds.append(pred)
        insts.append(inst)
    return FakeDataset(labels, preds, insts)
