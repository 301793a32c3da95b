"""Options and helpers shared by the ``runflow-callbacks`` subcommands.

Each shared option is added by one builder here and read back by one helper:

- :func:`add_secret_options` (``--secret``, repeatable): :func:`secrets_from_args`;
- :func:`add_signing_options` (``--secret`` and ``--sign-with``): :func:`signing_secret`, the
  one secret ``sign`` and ``send`` sign with;
- :func:`add_store_options` (``--store``, ``--namespace``): :func:`run_with_store`, or
  :func:`open_store_from_args` and :func:`check_store_url`;
- :func:`add_handler_option` (``--handler MODULE:FUNCTION``): :func:`handler_from_args`, then
  :func:`processor_for` once the store is open;
- :func:`add_api_options` (``--api-url``, ``--api-key``, ``--organization-id``):
  :func:`client_from_args` and :func:`async_client_from_args`;
- :func:`port_number`: the type of ``--port``.

A command that reads a body calls :func:`read_input`. Secret values never reach the terminal:
every secret carries a label saying where it came from (``--secret 1``, ``env 0``), and that
label is what gets reported. Store URLs are shown through
:func:`~runflow_callbacks.stores.mask_url` (never their password). Values that came from a
request or from the Runflow API go through :func:`shown` before they are printed in a table.

Every command module is imported to build the parser, whichever command runs, so this module
and the builders import only the standard library, :mod:`runflow_callbacks.errors` and
:mod:`runflow_callbacks.defaults`; the helpers that need the library import it when called.
"""

from __future__ import annotations

import argparse
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
from runflow_callbacks.errors import ConfigurationError, RunflowCallbackError

if TYPE_CHECKING:
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
    "add_signing_options",
    "add_store_options",
    "api_options",
    "async_client_from_args",
    "check_store_url",
    "check_url",
    "client_from_args",
    "handler_from_args",
    "open_store_from_args",
    "port_number",
    "processor_for",
    "read_input",
    "run_with_store",
    "secrets_from_args",
    "shown",
    "signing_secret",
]

#: Environment variable holding comma-separated secrets (used when no ``--secret`` is given).
SECRETS_ENV_VARIABLE: Final = SECRETS_ENV

T = TypeVar("T")


# --- secrets and bodies ----------------------------------------------------------------------


#: What ``--secret`` is for, by default: the commands that verify (``verify``, ``serve``).
_VERIFYING: Final = (
    "a callback secret (whsec_...); repeat it during a rotation: each is tried in turn."
)
_SIGNING: Final = (
    "the callback secret to sign with (whsec_...). Given several (during a rotation: the old, "
    "then the new), the last one signs unless --sign-with names another."
)


def add_secret_options(parser: argparse.ArgumentParser, *, purpose: str = _VERIFYING) -> None:
    """Add the repeatable ``--secret`` option (stored in ``args.secrets``).

    ``purpose`` is the first sentence of its help: what the command does with the secrets
    (by default: tries each in turn, as ``verify`` and ``serve`` do).
    """
    parser.add_argument(
        "--secret",
        action="append",
        dest="secrets",
        metavar="SECRET",
        help=(
            f"{purpose} Without --secret, the comma-separated secrets of "
            f"{SECRETS_ENV_VARIABLE} are used (prefer the variable: command-line values are "
            "visible in the process list)."
        ),
    )


def add_signing_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--secret`` for a command that signs, and ``--sign-with`` (``args.sign_with``)."""
    add_secret_options(parser, purpose=_SIGNING)
    parser.add_argument(
        "--sign-with",
        metavar="SECRET",
        help=(
            "sign with this one of the secrets instead of the last: its position (0 for the "
            "first --secret, or the first secret of the variable) or its label ('--secret 0', "
            "'env 1')"
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


def signing_secret(args: argparse.Namespace, *, environ: Mapping[str, str] | None = None) -> Secret:
    """The secret ``sign`` and ``send`` sign with: the last of :func:`secrets_from_args`.

    The README's rotation lists the old secret, then the new one, and Runflow signs with the
    newest. ``--sign-with`` names another by position (``--secret`` order, or the order of
    ``RUNFLOW_CALLBACK_SECRETS``), label (``env 0``) or id. A choice that names none raises
    :class:`~runflow_callbacks.errors.ConfigurationError` listing the positions and labels; it
    never repeats what was given, which could be a secret pasted in the wrong place.
    """
    secrets = secrets_from_args(args, environ=environ)
    choice: str | None = getattr(args, "sign_with", None)
    if choice is None:
        return secrets[-1]
    wanted = choice.strip()
    if wanted.isascii() and wanted.isdigit():
        if int(wanted) < len(secrets):
            return secrets[int(wanted)]
    else:
        for secret in secrets:
            if wanted and wanted in {secret.label, secret.id}:
                return secret
    count = len(secrets)
    positions = "0" if count == 1 else "0 or 1" if count == 2 else f"0 to {count - 1}"
    labels = ", ".join(secret.name for secret in secrets)
    raise ConfigurationError(
        f"--sign-with names none of the secrets given: use a position ({positions}) "
        f"or a label ({labels})"
    )


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
            f"(default: ${STORE_ENV}, else {DEFAULT_STORE_URL}). Prefer setting {STORE_ENV}: "
            "a URL given here, and the password in it, is visible in the process list."
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


def open_store_from_args(args: argparse.Namespace, *, create: bool = True) -> CallbackStore:
    """The store of ``args.store`` within ``args.namespace``, opened (which does no I/O).

    ``create=False`` is for the commands that only read, or retry, what a store holds: a store
    that does not exist is reported (a ``StoreError``) instead of being created empty.

    Whatever the URL does wrong is one of our errors, so that the command line reports it in
    one line: a driver that is not installed, or a URL the driver refuses (a port that is not
    a number), is a :class:`~runflow_callbacks.errors.ConfigurationError`, like an unknown
    scheme; a server that cannot be reached is the backend's ``StoreError``, on first use.
    Messages show the URL masked (:func:`~runflow_callbacks.stores.mask_url`).
    """
    from runflow_callbacks.stores import mask_url, open_store, scrub  # noqa: PLC0415 - see top

    url: str = args.store
    try:
        return open_store(url, namespace=args.namespace, create=create)
    except RunflowCallbackError:
        raise
    except ImportError as exc:  # the backend's driver is missing; its message says what to install
        raise ConfigurationError(scrub(str(exc), url)) from None
    except ValueError as exc:  # the driver refused the URL
        raise ConfigurationError(
            f"unusable store URL {mask_url(url)}: {scrub(str(exc), url)}"
        ) from None


def check_store_url(args: argparse.Namespace) -> None:
    """Open the store of ``args`` and check it can record (``ready()``: one write that changes
    nothing), then close it: a URL no backend can use, or a store that is down or read-only,
    is one line before a server starts (see :func:`open_store_from_args`)."""

    async def ready(store: CallbackStore) -> None:
        await store.ready()

    run_with_store(args, ready)


def run_with_store(
    args: argparse.Namespace,
    action: Callable[[CallbackStore], Awaitable[T]],
    *,
    create: bool = True,
) -> T:
    """Open the store of ``args.store`` / ``args.namespace``, run ``action`` on it, close it.

    Runs its own event loop (``asyncio.run``) and returns what ``action`` returned; the store
    is closed even when ``action`` raises. ``create`` is :func:`open_store_from_args`'.
    """
    import asyncio  # noqa: PLC0415 - only the store commands need an event loop

    async def main() -> T:
        async with open_store_from_args(args, create=create) as store:
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

    The URL falls back on :data:`~runflow_callbacks.defaults.DEFAULT_API_URL`, and one that
    cannot be parsed raises :class:`~runflow_callbacks.errors.ConfigurationError`; a missing
    key stays None, and the client reports it.
    """
    env = os.environ if environ is None else environ
    base_url = args.api_url or env.get(API_URL_ENV) or DEFAULT_API_URL
    check_url(base_url, what="--api-url" if args.api_url else f"${API_URL_ENV}")
    return ApiOptions(
        api_key=args.api_key or env.get(API_KEY_ENV),
        base_url=base_url,
        organization_id=args.organization_id,
    )


def check_url(url: str, *, what: str) -> None:
    """A URL that is not http(s), or that httpx cannot parse (a broken host, a port that is
    not a number), is a :class:`~runflow_callbacks.errors.ConfigurationError` naming ``what``
    (the option or variable it came from)."""
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"{what} must start with http:// or https://")
    import httpx  # noqa: PLC0415 - the commands that call this send requests with it

    try:
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigurationError(f"{what}: {exc}") from None


def client_from_args(args: argparse.Namespace) -> RunflowClient:
    """A :class:`~runflow_callbacks.client.RunflowClient` configured by the API options."""
    from runflow_callbacks.client import RunflowClient  # noqa: PLC0415 - httpx and pydantic

    return RunflowClient(**api_options(args))


def async_client_from_args(args: argparse.Namespace) -> AsyncRunflowClient:
    """An :class:`~runflow_callbacks.client.AsyncRunflowClient` configured by the API options."""
    from runflow_callbacks.client import AsyncRunflowClient  # noqa: PLC0415 - httpx and pydantic

    return AsyncRunflowClient(**api_options(args))


# --- servers and tables ----------------------------------------------------------------------


def port_number(text: str) -> int:
    """The type of a ``--port``: 0 to 65535, where 0 lets the system pick a free port (uvicorn
    logs the one it got)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return port


def shown(value: str | None, *, missing: str = "-") -> str:
    """``value``, from a request or from the Runflow API, safe in one line of a table.

    A printable value is shown whole (a key in ``inbox list`` must stay copyable); one holding
    a newline or another control character is shown as the log lines show it
    (:func:`runflow_callbacks._log.printable`: its ``repr()``), so that it can neither break
    a line nor forge one. None is ``missing``.
    """
    if value is None:
        return missing
    if value.isprintable():
        return value
    from runflow_callbacks._log import printable  # noqa: PLC0415 - imports logging

    return printable(value) or missing
