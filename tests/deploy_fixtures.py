"""Shared pieces of the deployment tests: real photo crops, tiny trained runs, decoders with random weights."""

from __future__ import annotations

import shlex
from pathlib import Path

import torch
from skimage import data
from torch import nn

from seglab.cli import main as seglab
from seglab.engine.checkpoint import load_run

# A small timm basenet: exporting and running it is cheap, and it has taps at strides 4 to 32 like the seed FEs.
FE = "resnet10t"


def photo_crops() -> list[torch.Tensor]:
    """Two real photos (scikit-image's astronaut and chelsea) as uint8 [3, H, W] crops of different sizes,
    neither a multiple of 32, so that padding and dynamic height/width are exercised."""
    astronaut = torch.from_numpy(data.astronaut()[40:110, 150:240].copy()).permute(2, 0, 1).contiguous()
    chelsea = torch.from_numpy(data.chelsea()[60:121, 120:197].copy()).permute(2, 0, 1).contiguous()
    return [astronaut, chelsea]


def randomize_decoder(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give the decoder random weights (FCN's score layers start at zero, which would make outputs trivial)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.decoder.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def train_tiny_run(runs_root: Path, decoder: str = "fcn8s") -> Path:
    """Train a 1-step run on the embedded synthetic dataset (32x32 images); return its folder."""
    name = f"tiny_{decoder}"
    code = seglab(
        [
            *["train", "--basenet"],
            FE,
            *["--decoder"],
            decoder,
            *shlex.split(
                "--pretrained none --iters 1 --batch-size 2 --crop 32 --dataset-options length=4 size=32 "
                "--workers 0 --eval-every 0 --device cpu --runs-root"
            ),
            str(runs_root),
            *["--run-name"],
            name,
        ]
    )
    assert code == 0
    return runs_root / name


def randomize_run(run: Path, seed: int = 0) -> Path:
    """Rewrite a run's last checkpoint with random decoder weights, so that its predictions vary by pixel."""
    model = load_run(run).model
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["model"] = randomize_decoder(model, seed).state_dict()
    torch.save(state, path)
    return run
