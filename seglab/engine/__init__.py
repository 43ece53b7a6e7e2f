"""The engine: training loop, checkpoints, distributed helpers, evaluation and inference."""
