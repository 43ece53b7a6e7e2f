"""Test-wide settings: one intra-op thread per pytest-xdist worker, so two workers share two cores fairly."""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
