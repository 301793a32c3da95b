"""The receiver as a ready-made application: what ``runflow-callbacks serve`` runs.

>>> app = create_app(secrets=["whsec_..."], store="sqlite:///./runflow-callbacks.db",
...                  handler=handle_callback)  # doctest: +SKIP

Routes: ``POST <path>`` (default ``/callbacks/runflow``) is a
:class:`~runflow_callbacks.receiver.CallbackReceiver` on the store; ``GET /healthz`` answers
``{"status": "ok"}``. Three ways to run, by ``handler`` and ``inbox``:

=====================  ======================================================================
no handler             every verified callback is recorded in the inbox (state ``received``)
                       and answered 200; run a handler later with ``serve --handler ... --inbox``
handler                synchronous: the handler runs while Runflow waits; 200 once it
                       returned, 500 (recorded, Runflow retries) when it raised
handler + ``inbox``    200 once recorded; a background worker runs the handler and retries
                       failures with backoff, up to the dead letter
=====================  ======================================================================

The store is closed when the application shuts down.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from runflow_callbacks.asgi import DEFAULT_CALLBACK_PATH, DEFAULT_MAX_BODY_BYTES
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.processing import DEFAULT_LEASE, DEFAULT_MAX_TRIES
from runflow_callbacks.receiver import CallbackReceiver, Handler
from runflow_callbacks.stores import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import Request

    from runflow_callbacks.stores import CallbackStore
    from runflow_callbacks.verifier import SecretsInput, Verifier

__all__ = ["DEFAULT_STORE_URL", "create_app", "load_handler"]

#: Where ``serve`` keeps callbacks when no ``--store`` is given.
DEFAULT_STORE_URL: Final = "sqlite:///./runflow-callbacks.db"


def load_handler(spec: str) -> Handler:
    """Import ``"package.module:function"`` (the current directory is importable).

    Raises :class:`~runflow_callbacks.errors.ConfigurationError` saying what went wrong.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"--handler must look like module:function, not {spec!r}")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigurationError(f"cannot import handler module {module_name!r}: {error}") from None
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ConfigurationError(f"{spec!r} is not callable")
    handler: Handler = target
    return handler


async def _health(_request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_app(
    *,
    secrets: SecretsInput | Verifier,
    store: str | CallbackStore = DEFAULT_STORE_URL,
    handler: Handler | str | None = None,
    inbox: bool = False,
    path: str = DEFAULT_CALLBACK_PATH,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allow_unsigned: bool = False,
    lease: timedelta = DEFAULT_LEASE,
    max_tries: int | None = DEFAULT_MAX_TRIES,
    poll_interval: timedelta = timedelta(seconds=1),
    namespace: str | None = None,
) -> Starlette:
    """Build the Starlette application ``runflow-callbacks serve`` runs.

    ``store`` is a store URL (see :func:`~runflow_callbacks.stores.open_store`) or an opened
    store; ``handler`` a callable taking the
    :class:`~runflow_callbacks.asgi.CallbackContext`, or a ``"module:function"`` string.
    """
    if not path.startswith("/"):
        raise ConfigurationError(f"the callback path must start with '/', not {path!r}")
    if isinstance(store, str):
        opened = open_store(store) if namespace is None else open_store(store, namespace=namespace)
    else:
        opened = store
    resolved = load_handler(handler) if isinstance(handler, str) else handler
    receiver = CallbackReceiver(
        secrets=secrets,
        store=opened,
        mode="inbox" if inbox or resolved is None else "sync",
        max_body_bytes=max_body_bytes,
        allow_unsigned=allow_unsigned,
        lease=lease,
        max_tries=max_tries,
    )
    if resolved is not None:
        receiver.on_any(resolved)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            if resolved is None:
                yield  # record only: there is nothing for a worker to run
            else:
                async with receiver.worker(poll_interval=poll_interval):
                    yield
        finally:
            await opened.close()

    app = Starlette(
        routes=[
            Route(path, receiver, methods=None),
            Route("/healthz", _health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.receiver = receiver
    app.state.store = opened
    return app
