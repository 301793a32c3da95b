"""Options and helpers shared by the ``runflow-callbacks`` subcommands.

A subcommand that needs callback secrets calls :func:`add_secret_options` on its parser and
:func:`secrets_from_args` on the parsed namespace; one that reads a body calls
:func:`read_input`. Secret values never reach the terminal: every secret carries a label saying
where it came from (``--secret 1``, ``env 0``), and that label is what gets reported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.verifier import Secret

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping

__all__ = ["SECRETS_ENV_VARIABLE", "add_secret_options", "read_input", "secrets_from_args"]

#: Environment variable holding comma-separated secrets (used when no ``--secret`` is given).
SECRETS_ENV_VARIABLE: Final = "RUNFLOW_CALLBACK_SECRETS"


def add_secret_options(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable ``--secret`` option (stored in ``args.secrets``)."""
    parser.add_argument(
        "--secret",
        action="append",
        dest="secrets",
        metavar="SECRET",
        help=(
            "a callback secret (whsec_...); repeat it to try several during a rotation. "
            f"Without --secret, the comma-separated secrets of {SECRETS_ENV_VARIABLE} are used "
            "(prefer the variable: command-line values are visible in the process list)."
        ),
    )


def secrets_from_args(
    args: argparse.Namespace, *, environ: Mapping[str, str] | None = None
) -> tuple[Secret, ...]:
    """The secrets given with ``--secret``, else those of ``RUNFLOW_CALLBACK_SECRETS``.

    Each :class:`~runflow_callbacks.verifier.Secret` is labelled by its origin and position
    (``--secret 0``, ``env 1``) and keeps that position, so commands can say which secret
    matched without printing it. Raises :class:`~runflow_callbacks.errors.ConfigurationError`
    when no secret is given or one is unusable (the message names the label, not the value).
    """
    given: list[str] | None = getattr(args, "secrets", None)
    if given:
        origin, values = "--secret", list(given)
    else:
        env = os.environ if environ is None else environ
        origin = "env"
        values = [item.strip() for item in env.get(SECRETS_ENV_VARIABLE, "").split(",")]
        values = [item for item in values if item]
    if not values:
        raise ConfigurationError(
            f"no callback secret given: pass --secret or set {SECRETS_ENV_VARIABLE}"
        )
    secrets: list[Secret] = []
    for position, value in enumerate(values):
        label = f"{origin} {position}"
        try:
            secret = Secret(value, label=label)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{label}: {exc}") from None
        secret.position = position
        secrets.append(secret)
    return tuple(secrets)


def read_input(path_or_dash: str | None, *, stdin: BinaryIO | None = None) -> bytes:
    """The exact bytes of the file at ``path_or_dash``, or of stdin for ``-`` or None.

    Nothing is decoded or stripped: a trailing newline stays part of the body. A file that
    cannot be read raises :class:`~runflow_callbacks.errors.ConfigurationError`.
    """
    if path_or_dash is None or path_or_dash == "-":
        stream = sys.stdin.buffer if stdin is None else stdin
        return stream.read()
    try:
        return Path(path_or_dash).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(f"cannot read {path_or_dash}: {reason}") from None
