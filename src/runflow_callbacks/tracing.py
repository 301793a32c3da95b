"""OpenTelemetry spans around each callback: verify, record, handler, answer.

Needs the ``otel`` extra (``pip install 'runflow-callbacks[otel]'``, opentelemetry-api; your
application configures the SDK and its exporter). Give a receiver one argument::

    receiver = CallbackReceiver(secrets=[...], store=store, tracing=CallbackTracing())

Each verified request is one ``runflow_callbacks.callback`` span with, as children,
``runflow_callbacks.verify`` (read, verify and parse the body), ``runflow_callbacks.record``
(the store call that records and claims it), ``runflow_callbacks.handler`` (the handler run),
``runflow_callbacks.complete`` and ``runflow_callbacks.answer``. The callback span carries
``runflow.request_id``, ``runflow.event``, ``runflow.subject_id``, ``runflow.key`` and
``runflow.outcome`` (a rejection: its error code, and the span's status is an error). Inbox
worker runs get a ``runflow_callbacks.handler`` span of their own. Never the body, the payload
or a secret.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any, Final

try:
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # pragma: no cover - depends on the installation
    raise ModuleNotFoundError(
        "runflow_callbacks.tracing needs OpenTelemetry: pip install 'runflow-callbacks[otel]'"
    ) from None

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.trace import Span, Tracer

    from runflow_callbacks.answers import Outcome
    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.stores import CallbackStore

__all__ = ["CallbackTracing"]

#: Store operations with a span of their own, and its name.
_TRACED: Final = {
    "record_and_claim": "runflow_callbacks.record",
    "record": "runflow_callbacks.record",
    "complete": "runflow_callbacks.complete",
    "fail": "runflow_callbacks.complete",
    "release": "runflow_callbacks.complete",
}


class CallbackTracing:
    """Where a receiver's spans go: ``tracer``, or the global provider's
    ``runflow_callbacks`` tracer."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self.tracer = trace.get_tracer("runflow_callbacks") if tracer is None else tracer

    @contextlib.contextmanager
    def span(self, name: str, **attributes: str | int | None) -> Iterator[Span]:
        """A span named ``runflow_callbacks.<name>`` (attributes that are None left out)."""
        with self.tracer.start_as_current_span(f"runflow_callbacks.{name}") as span:
            for key, value in attributes.items():
                if value is not None:
                    span.set_attribute(f"runflow.{key}", value)
            yield span

    @staticmethod
    def describe(span: Span, context: CallbackContext, outcome: Outcome) -> None:
        """Put what became of ``context`` on its callback span."""
        for key, value in (
            ("request_id", context.request_id),
            ("event", context.event),
            ("subject_id", context.subject_id),
            ("key", outcome.key),
            ("outcome", outcome.status),
        ):
            if value is not None:
                span.set_attribute(f"runflow.{key}", value)
        if not outcome.ok:
            span.set_status(Status(StatusCode.ERROR, outcome.status))

    @staticmethod
    def refused(span: Span, code: str) -> None:
        """Mark the callback span of a rejected request."""
        span.set_attribute("runflow.outcome", code)
        span.set_status(Status(StatusCode.ERROR, code))

    def traced_store(self, store: CallbackStore) -> CallbackStore:
        """``store`` with a span around recording and completing."""
        return _TracedStore(store, self)


class _TracedStore:
    def __init__(self, store: CallbackStore, tracing: CallbackTracing) -> None:
        self._store = store
        self._tracing = tracing

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        span_name = _TRACED.get(name)
        if span_name is None:
            return attribute
        tracer = self._tracing.tracer

        @functools.wraps(attribute)
        async def traced(*args: Any, **kwargs: Any) -> Any:
            with tracer.start_as_current_span(span_name):
                return await attribute(*args, **kwargs)

        return traced

    async def __aenter__(self) -> _TracedStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._store.close()
