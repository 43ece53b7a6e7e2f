"""The `seglab` command: thin subcommands that call into the package.

Each entry of SUBCOMMANDS names a module that defines `add_arguments(parser)` and `main(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "models": ("seglab.models.summary", "list FEs and decoders; params and GFLOPs per FE x decoder"),
}


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(prog="seglab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(run=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `seglab` console script."""
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
