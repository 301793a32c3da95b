"""The ``runflow-callbacks`` command line.

Each subcommand lives in a module of this package that exposes ``register(subparsers)``; the
handler set with ``parser.set_defaults(func=...)`` takes the parsed namespace and returns the
exit status. Errors of our own become one line on stderr and exit status 1 (2 for usage, as
argparse exits): a command turns every ordinary mistake (a bad value, a store URL no backend
can use, a driver that is not installed) into one of them, and never lets a traceback out. A
reader that goes away (``runflow-callbacks inbox list | head``) ends the output quietly.

Every command module is imported to build the parser, whichever command runs. So their
top-level imports stay light (the standard library, :mod:`runflow_callbacks.errors`,
:mod:`runflow_callbacks.defaults`): each command function imports what it needs, and
``runflow-callbacks sign`` or ``--version`` never load pydantic, httpx, starlette or anyio.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from runflow_callbacks.errors import RunflowCallbackError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["build_parser", "main"]

#: The modules whose ``register()`` adds the subcommands, in the order ``--help`` lists them.
_COMMAND_MODULES = (
    "runflow_callbacks.cli.signing",
    "runflow_callbacks.cli.demo",
    "runflow_callbacks.cli.send",
    "runflow_callbacks.cli.history",
    "runflow_callbacks.cli.fake",
    "runflow_callbacks.cli.serve",
    "runflow_callbacks.cli.inbox",
    "runflow_callbacks.cli.reconcile",
)


class _VersionAction(argparse.Action):
    """``--version``: print ``runflow-callbacks <version>`` on stdout and exit 0.

    argparse's own ``action="version"`` wants the text when the parser is built; this one reads
    the installed distribution's metadata only when the flag is given, because
    :mod:`importlib.metadata` costs more to import than the rest of a ``sign``.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> NoReturn:
        from runflow_callbacks._metadata import distribution_version  # noqa: PLC0415 - see above

        print(f"{parser.prog} {distribution_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every subcommand registered, nothing heavy imported."""
    parser = argparse.ArgumentParser(
        prog="runflow-callbacks",
        description="Sign, verify, receive and debug Runflow callbacks.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="show program's version number and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (1 for our own errors, 130 when interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        status = func(args)
        sys.stdout.flush()  # here, so that a reader gone away is caught below
        return status
    except RunflowCallbackError as exc:
        print(f"runflow-callbacks {args.command}: {_one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _drop_stdout()
        return 1


def _one_line(message: str) -> str:
    """A message on one line: a driver's may run over several (psycopg adds a hint)."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _drop_stdout() -> None:
    """Send what is left of stdout nowhere: the interpreter flushes it again at exit."""
    import os  # noqa: PLC0415 - only when the reader went away

    try:
        descriptor = sys.stdout.fileno()
    except (OSError, ValueError):  # not a file (a test's capture): nothing flushes it at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)
