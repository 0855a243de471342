"""The `scail2` console entry: one thin verb per task, each a module under `scail2.commands`.

A command module defines `register(subparsers)`, which adds its parser and sets `func` to a callable
taking the parsed arguments. Heavy imports happen inside `func`, so `scail2 --help` stays fast.

Errors the user can fix are one line on stderr and exit status 2: a `Scail2Error` (bad input), or a missing
optional dependency, which names the extra to install (`scail2.optional`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from scail2.errors import Scail2Error
from scail2.optional import MissingDependency, missing_dependency

# Order here is the order in `scail2 --help`.
COMMAND_MODULES = [
    "scail2.commands.animate",
    "scail2.commands.batch",
    "scail2.commands.plan",
    "scail2.commands.convert",
    "scail2.commands.demo",
    "scail2.commands.eval",
    "scail2.commands.masks",
    "scail2.commands.cues",
    "scail2.commands.app",
    "scail2.commands.synth",
    "scail2.commands.prefs",
    "scail2.commands.cache",
    "scail2.commands.train",
    "scail2.commands.train_vae",
]


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (`scail2 CMD: error: ...`, exit status 2), without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="scail2", description="Skeleton-free character animation (SCAIL-2).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a bad flag already reported in one line
        return stop.code if isinstance(stop.code, int) else 2
    try:
        result = args.func(args)
    except MissingDependency as error:
        print(error.describe(f"scail2 {args.command}"), file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        missing = missing_dependency(error)  # an optional module imported without `require`
        if missing is None:
            raise
        print(missing.describe(f"scail2 {args.command}"), file=sys.stderr)
        return 2
    except Scail2Error as error:
        message = " ".join(str(error).split())  # one line, whatever a wrapped message held
        print(f"scail2 {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scail2 {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
