"""Test-wide settings and shared fixtures: one intra-op thread per pytest-xdist worker, so two workers share
two cores fairly; a warm training server per test module."""

import os

import pytest
import torch
from train_runner import TrainServer

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A training server (see tests/train_runner.py) shared by the tests of one module."""
    srv = TrainServer(tmp_path_factory.mktemp("server"))
    yield srv
    srv.close()
