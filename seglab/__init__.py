"""seglab: any pretrained basenet (feature extractor) x any decoder, trained from one command, evaluated honestly.

The library API: `build_model` and `build_dataset` here, and `load_model(RUN)`, a trained run (or an exported
.onnx model) as a callable on numpy/PIL images; every command's workflow takes its typed config from
`seglab.config` (`seglab.engine.train.train`, `seglab.evaluation.test`, `seglab.compare.compare_runs`,
`seglab.export.export`, `seglab.predict.predict`, `seglab.bench.bench`, `seglab.study.run_study`).
"""

from seglab.data import build_dataset
from seglab.models import build_model
from seglab.segmenter import load_model

__version__ = "0.2.0"

__all__ = ["__version__", "build_dataset", "build_model", "load_model"]
