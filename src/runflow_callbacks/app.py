"""The receiver as a ready-made application: what ``runflow-callbacks serve`` runs.

>>> app = create_app(secrets=["whsec_..."], store="sqlite:///./runflow-callbacks.db",
...                  handler=handle_callback)  # doctest: +SKIP

Routes: ``POST <path>`` (default ``/callbacks/runflow``) is a
:class:`~runflow_callbacks.receiver.CallbackReceiver` on the store; ``GET /healthz`` is the
liveness probe (``{"status": "ok"}`` while the process serves), ``GET /readyz`` the readiness
probe: 200 ``{"status": "ready"}`` when the store can record a callback now, 503
``{"error": "store_unavailable", ...}`` when it cannot (down, read-only), so a load balancer
stops routing callbacks to a replica that would answer them 503. Three ways to run, by
``handler`` and ``inbox``:

=====================  ======================================================================
no handler             every verified callback is recorded in the inbox (state ``received``)
                       and answered 200; run a handler later with ``serve --handler ... --inbox``
handler                synchronous: the handler runs while Runflow waits; 200 once it
                       returned, 500 (recorded, Runflow retries) when it raised
handler + ``inbox``    200 once recorded; a background worker runs the handler and retries
                       failures with backoff, up to the dead letter
=====================  ======================================================================

With ``senders=[Sender(...), ...]`` (:mod:`runflow_callbacks.senders`) there is a route per
sender instead, each with its own secrets, handler and options, all on the one store.

The store is closed when the application shuts down.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from runflow_callbacks.answers import rejection
from runflow_callbacks.defaults import (
    DEFAULT_CALLBACK_PATH,
    DEFAULT_KEEP_REJECTED_BYTES,
    DEFAULT_STORE_URL,
    DEFAULT_TOMBSTONE_RETENTION,
)
from runflow_callbacks.errors import ConfigurationError, StoreError
from runflow_callbacks.options import resolve
from runflow_callbacks.receiver import CallbackReceiver
from runflow_callbacks.retention import check_retention, pruning
from runflow_callbacks.stores import open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from datetime import timedelta

    from starlette.requests import Request
    from typing_extensions import Unpack

    from runflow_callbacks.handlers import Handler
    from runflow_callbacks.handoff import HandOff
    from runflow_callbacks.metrics import CallbackMetrics
    from runflow_callbacks.options import ReceiverArgs, ReceiverOptions
    from runflow_callbacks.senders import Sender
    from runflow_callbacks.stores import CallbackStore
    from runflow_callbacks.verifier import SecretsInput, Verifier

__all__ = ["DEFAULT_STORE_URL", "create_app", "load_handler"]


def load_handler(spec: str, *, flag: str = "--handler") -> Handler:
    """Import ``"package.module:function"`` (the current directory is importable).

    Raises :class:`~runflow_callbacks.errors.ConfigurationError` saying what went wrong, naming
    ``flag`` (the command-line option the spec came from).
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"{flag} must look like module:function, not {spec!r}")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigurationError(f"{flag}: cannot import module {module_name!r}: {error}") from None
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


def _metrics(metrics: bool | CallbackMetrics) -> CallbackMetrics | None:
    if metrics is False:
        return None
    if metrics is True:
        try:
            from runflow_callbacks.metrics import CallbackMetrics  # noqa: PLC0415 - metrics extra
        except ModuleNotFoundError as missing:
            raise ConfigurationError(str(missing)) from None
        return CallbackMetrics()
    return metrics


def _readiness(store: CallbackStore) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def ready(_request: Request) -> JSONResponse:
        try:
            await store.ready()
        except StoreError as error:
            status, content = rejection(error)
            return JSONResponse(content, status_code=status)
        return JSONResponse({"status": "ready"})

    return ready


def create_app(
    *,
    secrets: SecretsInput | Verifier | None = None,
    store: str | CallbackStore = DEFAULT_STORE_URL,
    handler: Handler | str | None = None,
    inbox: bool = False,
    path: str | None = None,
    senders: Sequence[Sender] | None = None,
    namespace: str | None = None,
    metrics: bool | CallbackMetrics = False,
    retention: timedelta | None = None,
    tombstone_retention: timedelta = DEFAULT_TOMBSTONE_RETENTION,
    keep_rejected: int = 0,
    keep_rejected_bytes: int = DEFAULT_KEEP_REJECTED_BYTES,
    hand_off: HandOff | None = None,
    options: ReceiverOptions | None = None,
    **changes: Unpack[ReceiverArgs],
) -> Starlette:
    """Build the Starlette application ``runflow-callbacks serve`` runs.

    ``store`` is a store URL (see :func:`~runflow_callbacks.stores.open_store`) or an opened
    store; ``handler`` a callable taking the
    :class:`~runflow_callbacks.context.CallbackContext`, or a ``"module:function"`` string.
    Every option of :class:`~runflow_callbacks.options.ReceiverOptions` may be given as a
    keyword or as ``options=``; ``inbox=True`` is short for ``mode="inbox"``, and without a
    handler the mode is always ``inbox`` (record only: nothing runs the callbacks yet).
    ``metrics=True`` (or a :class:`~runflow_callbacks.metrics.CallbackMetrics`) counts
    everything and answers ``GET /metrics``. ``retention`` prunes old finished callbacks in
    the background, keeping their tombstones ``tombstone_retention`` (see
    :mod:`runflow_callbacks.retention`); ``keep_rejected=N`` keeps the last ``N`` refused
    requests in the store (see :mod:`runflow_callbacks.rejected`).

    ``hand_off`` (see :mod:`runflow_callbacks.handoff`) queues a job for each recorded
    callback instead of running ``handler``, which the queue engine's workers run.

    ``senders=[Sender(...), ...]`` takes callbacks of several senders, each on its own path
    with its own secrets, handler and options, instead of ``secrets`` and ``path``: a
    :class:`~runflow_callbacks.senders.CallbackRouter` on the one store (``handler``, ``inbox``
    and the options are then every sender's defaults; ``app.state.router`` is the router).
    """
    if senders is not None:
        if hand_off is not None:
            raise ConfigurationError("hand_off takes one sender: pass it without senders=")
        return _several(
            senders,
            secrets=secrets,
            path=path,
            handler=handler,
            inbox=inbox,
            store=store,
            namespace=namespace,
            metrics=metrics,
            retention=retention,
            tombstone_retention=tombstone_retention,
            kept=(keep_rejected, keep_rejected_bytes),
            chosen=resolve(options, changes, who="create_app"),
        )
    if secrets is None:
        raise ConfigurationError("create_app needs secrets= (or senders=)")
    path = DEFAULT_CALLBACK_PATH if path is None else path
    if not path.startswith("/"):
        raise ConfigurationError(f"the callback path must start with '/', not {path!r}")
    resolved = load_handler(handler) if isinstance(handler, str) else handler
    chosen = resolve(options, changes, who="create_app")
    if hand_off is not None:
        if inbox or chosen.mode == "inbox":
            raise ConfigurationError(
                "with hand_off the queue's workers run the callbacks, not an inbox"
            )
        resolved = None  # the workers run it: this process only records and queues
    elif inbox or resolved is None:
        chosen = chosen.replace(mode="inbox")
    opened = _opened(store, namespace)
    counted = _metrics(metrics)
    if retention is not None:
        check_retention(retention, tombstone_retention)
    receiver = CallbackReceiver(
        secrets=secrets,
        store=opened,
        options=chosen,
        metrics=counted,
        keep_rejected=keep_rejected,
        keep_rejected_bytes=keep_rejected_bytes,
        hand_off=hand_off,
    )
    if resolved is not None:
        receiver.on_any(resolved)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            async with pruning(
                opened, retention=retention, tombstone_retention=tombstone_retention
            ):
                if resolved is None:
                    yield  # record only: there is nothing for a worker to run
                else:
                    async with receiver.worker():
                        yield
        finally:
            await receiver.flush_rejections()
            await opened.close()

    routes = [Route(path, receiver, methods=None), *_probes(opened, counted)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.receiver = receiver
    app.state.store = opened
    return app


def _probes(opened: CallbackStore, counted: CallbackMetrics | None) -> list[Route]:
    """``/healthz``, ``/readyz`` and, with metrics, ``/metrics``."""
    routes = [
        Route("/healthz", _health, methods=["GET"]),
        Route("/readyz", _readiness(opened), methods=["GET"]),
    ]
    if counted is not None:
        from runflow_callbacks.metrics import metrics_endpoint  # noqa: PLC0415 - metrics extra

        routes.append(Route("/metrics", metrics_endpoint(counted, opened), methods=["GET"]))
    return routes


def _opened(store: str | CallbackStore, namespace: str | None) -> CallbackStore:
    if isinstance(store, str):
        return open_store(store) if namespace is None else open_store(store, namespace=namespace)
    return store


def _several(
    senders: Sequence[Sender],
    *,
    secrets: SecretsInput | Verifier | None,
    path: str | None,
    handler: Handler | str | None,
    inbox: bool,
    store: str | CallbackStore,
    namespace: str | None,
    metrics: bool | CallbackMetrics,
    retention: timedelta | None,
    tombstone_retention: timedelta,
    kept: tuple[int, int],
    chosen: ReceiverOptions,
) -> Starlette:
    """:func:`create_app` for several senders: a route per sender, one store and worker."""
    from runflow_callbacks.senders import CallbackRouter, Sender  # noqa: PLC0415 - it imports us

    if secrets is not None or path is not None:
        raise ConfigurationError(
            "create_app takes senders= or secrets= and path=, not both: each sender has its "
            "own secrets and path"
        )
    if inbox:
        chosen = chosen.replace(mode="inbox")
    if handler is not None:  # every sender's default: give a sender without one this one
        senders = [
            sender
            if sender.handler is not None
            else Sender(
                name=sender.name,
                path=sender.path,
                secrets=sender.secrets,
                handler=handler,
                **sender.changes,
            )
            for sender in senders
        ]
    counted = _metrics(metrics)
    if retention is not None:
        check_retention(retention, tombstone_retention)
    opened = _opened(store, namespace)
    router = CallbackRouter(
        senders,
        store=opened,
        metrics=counted,
        options=chosen,
        keep_rejected=kept[0],
        keep_rejected_bytes=kept[1],
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            async with (
                pruning(opened, retention=retention, tombstone_retention=tombstone_retention),
                router.worker(),
            ):
                yield
        finally:
            await router.flush_rejections()
            await opened.close()

    routes = [
        *(Route(s.path, router.receivers[s.name], methods=None) for s in router.senders.values()),
        *_probes(opened, counted),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.router = router
    app.state.receivers = router.receivers
    app.state.store = opened
    return app
