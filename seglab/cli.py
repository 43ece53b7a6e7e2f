"""The `seglab` command: thin subcommands that call into the package.

Each entry of SUBCOMMANDS names a module that defines `add_arguments(parser)` and `main(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "models": ("seglab.models.summary", "list FEs and decoders; params and GFLOPs per FE x decoder"),
    "data": ("seglab.data.cli", "check a dataset's files, count its classes, convert SBD labels to PNG"),
    "train": ("seglab.engine.train", "train an FE x decoder network; writes a monitored, resumable run folder"),
    "runs": ("seglab.engine.runs", "list run folders with their best and last mIoU"),
    "test": ("seglab.engine.evaluate", "evaluate a run or checkpoint: metrics with CIs, report.html/.md"),
    "compare": ("seglab.compare", "compare evaluated runs: per-class deltas, curves, paired bootstrap of mIoU"),
    "bench": ("seglab.bench", "params, GFLOPs and latency (eager, channels-last, compile, ONNX Runtime)"),
    "export": ("seglab.export", "export a run's model to ONNX (dynamic H/W, verified) and safetensors"),
    "predict": ("seglab.predict", "segment images: palette label PNGs, colour overlays, probabilities"),
    "study": ("seglab.study", "train and evaluate an FE x decoder grid; results table, plots, rank correlation"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Return the top-level parser; only the subcommand named in `argv` is imported (start-up stays fast)."""
    parser = argparse.ArgumentParser(
        prog="seglab", description="seglab: any pretrained feature extractor x any decoder, trained and evaluated."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((arg for arg in argv or [] if arg in SUBCOMMANDS), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(run=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `seglab` console script."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
