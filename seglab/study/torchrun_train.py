"""The program torchrun starts on every rank of a study's DDP run job: `python -m seglab.study.torchrun_train FILE`.

FILE holds the run's TrainConfig keys; all of them count as given, so a resumed run is checked against its
checkpoint exactly as in-process training is (`seglab.study.jobs.train_run`).
"""

from __future__ import annotations

import sys

from seglab import config as cfg_mod
from seglab.config import TrainConfig
from seglab.engine.train import train


def train_from_file(path: str) -> int:
    """Train (or resume) the run whose TrainConfig keys are in the YAML file `path`; return the exit code."""
    keys = cfg_mod.load_yaml(path, "study train file")
    return train(cfg_mod.from_dict(TrainConfig, keys, path), explicit=keys)


if __name__ == "__main__":
    sys.exit(train_from_file(sys.argv[1]))
