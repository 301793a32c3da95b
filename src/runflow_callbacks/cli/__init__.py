"""The ``runflow-callbacks`` command line.

Each subcommand lives in a module of this package that exposes ``register(subparsers)``; the
handler set with ``parser.set_defaults(func=...)`` takes the parsed namespace and returns the
exit status. Errors of our own become one line on stderr and exit status 1 (2 for usage).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING

from runflow_callbacks import __version__
from runflow_callbacks.errors import RunflowCallbackError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["main"]

_COMMAND_MODULES = (
    "runflow_callbacks.cli.signing",
    "runflow_callbacks.cli.demo",
    "runflow_callbacks.cli.api",
    "runflow_callbacks.cli.fake",
    "runflow_callbacks.cli.serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runflow-callbacks",
        description="Sign, verify, receive and debug Runflow callbacks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except RunflowCallbackError as exc:
        print(f"runflow-callbacks {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
