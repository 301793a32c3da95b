"""Options and helpers shared by the ``runflow-callbacks`` subcommands.

Each shared option is added by one builder here and read back by one helper:

- :func:`add_secret_options` (``--secret``, repeatable): :func:`secrets_from_args`;
- :func:`add_store_options` (``--store``, ``--namespace``): :func:`run_with_store`;
- :func:`add_handler_option` (``--handler MODULE:FUNCTION``): :func:`handler_from_args`, then
  :func:`processor_for` once the store is open;
- :func:`add_api_options` (``--api-url``, ``--api-key``, ``--organization-id``):
  :func:`client_from_args` and :func:`async_client_from_args`.

A command that reads a body calls :func:`read_input`. Secret values never reach the terminal:
every secret carries a label saying where it came from (``--secret 1``, ``env 0``), and that
label is what gets reported.

Every command module is imported to build the parser, whichever command runs, so this module
and the builders import only the standard library, :mod:`runflow_callbacks.errors` and
:mod:`runflow_callbacks.defaults`; the helpers that need the library import it when called.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, BinaryIO, Final, TypedDict, TypeVar

from runflow_callbacks.defaults import (
    API_KEY_ENV,
    API_URL_ENV,
    DEFAULT_API_URL,
    DEFAULT_NAMESPACE,
    DEFAULT_STORE_URL,
    NAMESPACE_ENV,
    SECRETS_ENV,
    STORE_ENV,
)
from runflow_callbacks.errors import ConfigurationError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Awaitable, Callable, Mapping

    from runflow_callbacks.client import AsyncRunflowClient, RunflowClient
    from runflow_callbacks.handlers import Handler
    from runflow_callbacks.processing import CallbackProcessor
    from runflow_callbacks.stores import CallbackStore
    from runflow_callbacks.verifier import Secret

__all__ = [
    "SECRETS_ENV_VARIABLE",
    "ApiOptions",
    "add_api_options",
    "add_handler_option",
    "add_secret_options",
    "add_store_options",
    "api_options",
    "async_client_from_args",
    "client_from_args",
    "handler_from_args",
    "processor_for",
    "read_input",
    "run_with_store",
    "secrets_from_args",
]

#: Environment variable holding comma-separated secrets (used when no ``--secret`` is given).
SECRETS_ENV_VARIABLE: Final = SECRETS_ENV

T = TypeVar("T")


# --- secrets and bodies ----------------------------------------------------------------------


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
    # The verifier loads cryptography's bindings: only the commands that use secrets pay.
    from runflow_callbacks.verifier import Secret  # noqa: PLC0415

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
        with open(path_or_dash, "rb") as file:  # not pathlib: it costs start-up, see the top
            return file.read()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(f"cannot read {path_or_dash}: {reason}") from None


# --- the store and the handler ---------------------------------------------------------------


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--store`` and ``--namespace`` (``args.store``, ``args.namespace``).

    Their defaults are read from the environment when the parser is built.
    """
    parser.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV, DEFAULT_STORE_URL),
        metavar="URL",
        help=(
            "where callbacks are recorded: sqlite:///path.db, redis://..., postgresql://... "
            f"(default: ${STORE_ENV}, else {DEFAULT_STORE_URL})"
        ),
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get(NAMESPACE_ENV, DEFAULT_NAMESPACE),
        metavar="NAME",
        help=(
            "table name (SQL) or key prefix (Redis), so several receivers can share one server "
            f"(default: ${NAMESPACE_ENV}, else {DEFAULT_NAMESPACE})"
        ),
    )


def run_with_store(args: argparse.Namespace, action: Callable[[CallbackStore], Awaitable[T]]) -> T:
    """Open the store of ``args.store`` / ``args.namespace``, run ``action`` on it, close it.

    Runs its own event loop (``asyncio.run``) and returns what ``action`` returned; the store
    is closed even when ``action`` raises.
    """
    import asyncio  # noqa: PLC0415 - only the store commands need an event loop

    from runflow_callbacks.stores import open_store  # noqa: PLC0415 - keep registration light

    async def main() -> T:
        async with open_store(args.store, namespace=args.namespace) as store:
            return await action(store)

    return asyncio.run(main())


def add_handler_option(parser: argparse.ArgumentParser, *, what: str) -> None:
    """Add ``--handler MODULE:FUNCTION`` (``args.handler``); ``what`` ends its help."""
    parser.add_argument(
        "--handler",
        metavar="MODULE:FUNCTION",
        help=f"the function that processes each callback ({what})",
    )


def handler_from_args(args: argparse.Namespace) -> Handler | None:
    """The function named by ``--handler``, imported now; None when no handler was given.

    Raises :class:`~runflow_callbacks.errors.ConfigurationError` when it cannot be imported.
    """
    if args.handler is None:
        return None
    from runflow_callbacks.app import load_handler  # noqa: PLC0415 - imports the web stack

    return load_handler(args.handler)


def processor_for(store: CallbackStore, handler: Handler | None) -> CallbackProcessor | None:
    """The exactly-once processor running ``handler`` on ``store``; None without a handler."""
    if handler is None:
        return None
    # The engine imports pydantic: load it for the commands that run handlers only.
    from runflow_callbacks.processing import CallbackProcessor  # noqa: PLC0415

    return CallbackProcessor(store, handler)


# --- the Runflow API -------------------------------------------------------------------------


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--api-url``, ``--api-key`` and ``--organization-id`` (see :func:`api_options`)."""
    parser.add_argument(
        "--api-url",
        metavar="URL",
        help=f"the Runflow API (default: ${API_URL_ENV}, else {DEFAULT_API_URL})",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"the API key (default: ${API_KEY_ENV}; prefer the variable, flags are visible)",
    )
    parser.add_argument(
        "--organization-id", metavar="ID", help="sent as X-Organization-Id when given"
    )


class ApiOptions(TypedDict):
    """The keyword arguments of both Runflow clients, as the API options give them."""

    api_key: str | None
    base_url: str
    organization_id: str | None


def api_options(
    args: argparse.Namespace, *, environ: Mapping[str, str] | None = None
) -> ApiOptions:
    """The API options of ``args``, each flag falling back on its environment variable.

    The URL falls back on :data:`~runflow_callbacks.defaults.DEFAULT_API_URL`; a missing key
    stays None, and the client reports it.
    """
    env = os.environ if environ is None else environ
    return ApiOptions(
        api_key=args.api_key or env.get(API_KEY_ENV),
        base_url=args.api_url or env.get(API_URL_ENV) or DEFAULT_API_URL,
        organization_id=args.organization_id,
    )


def client_from_args(args: argparse.Namespace) -> RunflowClient:
    """A :class:`~runflow_callbacks.client.RunflowClient` configured by the API options."""
    from runflow_callbacks.client import RunflowClient  # noqa: PLC0415 - httpx and pydantic

    return RunflowClient(**api_options(args))


def async_client_from_args(args: argparse.Namespace) -> AsyncRunflowClient:
    """An :class:`~runflow_callbacks.client.AsyncRunflowClient` configured by the API options."""
    from runflow_callbacks.client import AsyncRunflowClient  # noqa: PLC0415 - httpx and pydantic

    return AsyncRunflowClient(**api_options(args))
