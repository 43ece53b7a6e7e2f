"""The `seglab` command: one module per subcommand in this package, each holding only its flags and `main`.

A subcommand module defines `add_arguments(parser)` and `main(args) -> int`; only the module of the
subcommand being run is imported, so start-up stays fast. The library below takes typed configs
(`seglab.config`) and never parses argv. Errors: a `SeglabError` (a fault in the user's input) is printed
as one line, ``seglab CMD: error: MESSAGE``, with exit status 1; any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from seglab.errors import SeglabError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "models": ("seglab.cli.models", "list basenets, decoders and datasets; params and GFLOPs per basenet x decoder"),
    "data": ("seglab.cli.data", "check a dataset's files, count its classes, convert SBD labels to PNG"),
    "train": ("seglab.cli.train", "train a basenet x decoder network; writes a monitored, resumable run folder"),
    "runs": ("seglab.cli.runs", "list run folders with their partial-val and full-val mIoU"),
    "test": ("seglab.cli.test", "evaluate a run or checkpoint: metrics with CIs, report.html/.md"),
    "compare": ("seglab.cli.compare", "compare evaluated runs: per-class deltas, curves, paired bootstrap of mIoU"),
    "bench": ("seglab.cli.bench", "params, GFLOPs and latency (eager, channels-last, compile, ONNX Runtime)"),
    "export": ("seglab.cli.export", "export a run's model to ONNX (dynamic H/W, verified) and safetensors"),
    "predict": ("seglab.cli.predict", "segment images: palette label PNGs, colour overlays, probabilities"),
    "study": (
        "seglab.cli.study",
        "train a basenet x decoder x grid study over seeds (locally or on SLURM); error bars, robustness, predictors",
    ),
}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (what, which flag, where to look) and exit 1."""

    def error(self, message: str) -> None:
        print(f"{self.prog}: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(1)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Return the top-level parser; only the subcommand named in `argv` is imported (start-up stays fast)."""
    parser = Parser(prog="seglab", description="seglab: any pretrained basenet x any decoder, trained and evaluated.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    chosen = next((arg for arg in argv or [] if arg in SUBCOMMANDS), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(_main=module.main, _prog=command.prog)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `seglab` console script."""
    argv = sys.argv[1:] if argv is None else argv
    args, extra = build_parser(argv).parse_known_args(argv)
    prog = getattr(args, "_prog", "seglab")
    if extra:  # reported by the subcommand, so that the message names it
        Parser(prog=prog).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args._main(args) or 0)
    except SeglabError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
