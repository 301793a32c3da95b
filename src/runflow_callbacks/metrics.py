"""Prometheus metrics of a receiver: what it answered, what it refused, how long things took.

Needs the ``metrics`` extra (``pip install 'runflow-callbacks[metrics]'``, prometheus-client).
Give a receiver one argument and it counts everything::

    metrics = CallbackMetrics()
    receiver = CallbackReceiver(secrets=[...], store=store, metrics=metrics)
    app.routes.append(Route("/metrics", metrics_endpoint(metrics, store)))

``runflow-callbacks serve --metrics`` does the same on its own port. Every series:

==================================================================  ================================
``runflow_callbacks_received_total{outcome}``                       every answer to a verified
                                                                    callback: ``processed``,
                                                                    ``duplicate``, ``in_progress``,
                                                                    ``failed``, ``unhandled``,
                                                                    ``recorded``, ``dead``,
                                                                    ``store_unavailable``
``runflow_callbacks_rejected_total{reason}``                        every request refused before a
                                                                    handler: the error code
                                                                    (``signature_mismatch``,
                                                                    ``missing_signature``, ...)
``runflow_callbacks_runs_total{outcome,source}``                    handler runs no request waited
                                                                    for (inbox worker, retry,
                                                                    reconcile)
``runflow_callbacks_handler_seconds``                               each handler run (histogram)
``runflow_callbacks_store_seconds{operation}``                      each store call (histogram)
``runflow_callbacks_inbox_callbacks{state}``                        callbacks per state, read from
                                                                    the shared store at each scrape
                                                                    (every replica reports the same)
``runflow_callbacks_secret_last_match_timestamp_seconds{secret}``   when each secret last matched:
                                                                    one that stops matching is the
                                                                    first sign of a broken rotation
==================================================================  ================================

The counts are exact (incremented where the answer is decided); the histograms use
prometheus-client's default buckets. Secrets are named by their label, never their value.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import TYPE_CHECKING, Any, Final

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
except ImportError:  # pragma: no cover - depends on the installation
    raise ModuleNotFoundError(
        "runflow_callbacks.metrics needs prometheus-client: "
        "pip install 'runflow-callbacks[metrics]'"
    ) from None

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.requests import Request
    from starlette.responses import Response

    from runflow_callbacks.answers import Outcome
    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.stores import CallbackStore
    from runflow_callbacks.verifier import Verifier

__all__ = ["CallbackMetrics", "metrics_endpoint"]

#: The store's per-state counts that the inbox gauge shows (``StoreStats`` field -> state).
_STATES: Final = {
    "pending": "received",
    "processing": "processing",
    "processed": "processed",
    "failed": "failed",
    "dead": "dead",
    "unhandled": "unhandled",
}
#: The store operations that are timed (every one a backend implements).
_TIMED: Final = frozenset(
    {
        "record",
        "record_and_claim",
        "claim",
        "complete",
        "fail",
        "release",
        "renew",
        "claim_due",
        "get",
        "list_callbacks",
        "stats",
        "note_rejected",
        "reset_for_retry",
        "ready",
    }
)


class CallbackMetrics:
    """The series of one receiver (or several sharing it), in ``registry`` (a new one unless
    given: pass ``prometheus_client.REGISTRY`` to expose them with your own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        registry = self.registry
        self.received = Counter(
            "runflow_callbacks_received",
            "Verified callbacks, by the outcome they were answered with.",
            ["outcome"],
            registry=registry,
        )
        self.rejected = Counter(
            "runflow_callbacks_rejected",
            "Requests refused before any handler, by error code.",
            ["reason"],
            registry=registry,
        )
        self.runs = Counter(
            "runflow_callbacks_runs",
            "Handler runs no request waited for (inbox worker, retry, reconcile), by outcome.",
            ["outcome", "source"],
            registry=registry,
        )
        self.handler_seconds = Histogram(
            "runflow_callbacks_handler_seconds",
            "How long each handler run took.",
            registry=registry,
        )
        self.store_seconds = Histogram(
            "runflow_callbacks_store_seconds",
            "How long each store call took, by operation.",
            ["operation"],
            registry=registry,
        )
        self.inbox = Gauge(
            "runflow_callbacks_inbox_callbacks",
            "Callbacks in the store, by state (read from the store at each scrape).",
            ["state"],
            registry=registry,
        )
        self.secret_last_match = Gauge(
            "runflow_callbacks_secret_last_match_timestamp_seconds",
            "When each configured secret last matched a callback (Unix time; 0: never).",
            ["secret"],
            registry=registry,
        )

    def know_secrets(self, verifier: Verifier) -> None:
        """Show every configured secret, at 0 until it first matches."""
        for secret in verifier.secrets:
            self.secret_last_match.labels(secret.name)

    def answered(self, context: CallbackContext, outcome: Outcome) -> None:
        """Count the answer to one verified callback."""
        self.received.labels(outcome.status).inc()
        if context.secret_label is not None:
            self.secret_last_match.labels(context.secret_label).set(time.time())

    def refused(self, code: str) -> None:
        """Count one request refused before any handler."""
        self.rejected.labels(code).inc()

    def ran(self, context: CallbackContext, outcome: Outcome) -> None:
        """Count one handler run that no request waited for."""
        self.runs.labels(outcome.status, context.source).inc()

    def timed_store(self, store: CallbackStore) -> CallbackStore:
        """``store`` with each call timed in ``runflow_callbacks_store_seconds``."""
        return _TimedStore(store, self.store_seconds)

    async def refresh(self, store: CallbackStore) -> None:
        """Read the per-state counts from ``store`` into the inbox gauge."""
        stats = await store.stats()
        for field, state in _STATES.items():
            self.inbox.labels(state).set(getattr(stats, field))

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class _TimedStore:
    """A store whose calls are timed; everything else passes through."""

    def __init__(self, store: CallbackStore, histogram: Histogram) -> None:
        self._store = store
        self._histogram = histogram

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name not in _TIMED:
            return attribute
        observe = self._histogram.labels(name).observe

        @functools.wraps(attribute)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await attribute(*args, **kwargs)
            finally:
                observe(time.perf_counter() - started)

        return timed

    async def __aenter__(self) -> _TimedStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._store.close()

    def __repr__(self) -> str:
        return f"timed({self._store!r})"


def metrics_endpoint(
    metrics: CallbackMetrics, store: CallbackStore | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint answering the scrape (the inbox gauge refreshed from ``store``).

    A store that cannot be read leaves the gauge as it was; the other series still answer.
    """
    from starlette.responses import Response  # noqa: PLC0415 - the endpoint's own dependency

    from runflow_callbacks.errors import StoreError  # noqa: PLC0415

    async def scrape(_request: Request) -> Response:
        if store is not None:
            with contextlib.suppress(StoreError):  # the other series still answer
                await metrics.refresh(store)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return scrape
