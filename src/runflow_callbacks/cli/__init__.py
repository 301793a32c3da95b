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

from runflow_callbacks.errors import RunflowCallbackError

TYPE_CHECKING = False  # importing typing costs a short command's start-up; checkers see True
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

__all__ = ["build_parser", "main"]

#: The modules whose ``register()`` adds the subcommands, in the order ``--help`` lists them,
#: with the commands each registers (``tests/test_cli_errors.py`` checks they agree).
_COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "runflow_callbacks.cli.signing": ("sign", "verify"),
    "runflow_callbacks.cli.demo": ("demo",),
    "runflow_callbacks.cli.send": ("send",),
    "runflow_callbacks.cli.history": ("history", "redeliver"),
    "runflow_callbacks.cli.fake": ("fake-runflow",),
    "runflow_callbacks.cli.serve": ("serve",),
    "runflow_callbacks.cli.inbox": ("inbox",),
    "runflow_callbacks.cli.reconcile": ("reconcile",),
}


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


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line, nothing heavy imported.

    Given the ``argv`` about to be parsed, only what it needs is built: nothing but the
    top-level options for ``--version``, the one command's module for a command (building
    every command's options is most of a short command's start-up). Without ``argv``, or for
    ``--help`` or anything unknown, every command.
    """
    parser = argparse.ArgumentParser(
        prog="runflow-callbacks",
        description="Sign, verify, receive and debug Runflow callbacks.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="show program's version number and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _modules_for(argv):
        importlib.import_module(name).register(sub)
    return parser


def _modules_for(argv: Sequence[str] | None) -> Sequence[str]:
    if argv:
        first = argv[0]
        if first == "--version":
            return ()
        for module, commands in _COMMAND_MODULES.items():
            if first in commands:
                return (module,)
    return tuple(_COMMAND_MODULES)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (1 for our own errors, 130 when interrupted)."""
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(words)
    args = parser.parse_args(words)
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
