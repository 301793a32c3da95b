"""The one thing every handler receives: :class:`CallbackContext`.

Whatever ran the handler (the middleware, the receiver with or without a store, the inbox
worker, ``inbox retry``, ``reconcile``), it gets a ``CallbackContext``: the typed payload, the
exact verified bytes, the Runflow headers as sent, the matched secret, the request id and,
when a store is involved, the idempotency key, the attempt number and what started this run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from starlette.requests import HTTPConnection
    from starlette.types import Scope

    from runflow_callbacks.models import CallbackPayload

__all__ = ["STATE_KEY", "CallbackContext", "RunSource", "existing_callback", "get_callback"]

RunSource = Literal["http", "retry", "reconcile"]
"""What started a handler run: a delivery over HTTP (also when an inbox worker runs it later),
``inbox retry`` (:meth:`~runflow_callbacks.processing.CallbackProcessor.retry`), or
reconciliation from Runflow's delivery history."""

#: Key of the :class:`CallbackContext` in ``scope["state"]`` (``request.state.runflow_callback``).
STATE_KEY: Final = "runflow_callback"


@dataclass(frozen=True, slots=True)
class CallbackContext:
    """A verified callback, as every handler and front door sees it.

    ``payload`` is parsed from ``body``, the exact bytes that were verified. ``secret_id`` and
    ``secret_label`` name the secret that matched (both None for an unsigned callback accepted
    with ``allow_unsigned=True``, or one read back by reconciliation, where ``signed`` is
    False). ``headers`` holds the Runflow-relevant request headers (``Runflow-Signature``,
    ``Runflow-Request-Id``, ``Content-Type``, ``User-Agent``) as sent, decoded as latin-1.
    ``received_at`` comes from the configured clock.

    With a store, ``key`` is the idempotency key, ``attempt`` counts handler runs of this
    callback, this one included (1 on the first run); both are None without a store.
    ``source`` says what started this run (see :data:`RunSource`).
    """

    payload: CallbackPayload
    body: bytes
    secret_id: str | None
    secret_label: str | None
    request_id: str | None
    headers: Mapping[str, str]
    received_at: datetime
    signed: bool
    key: str | None = None
    attempt: int | None = None
    source: RunSource = "http"

    @property
    def event(self) -> str | None:
        """The payload's ``event`` (None in the older shape without it)."""
        return self.payload.event

    @property
    def subject_id(self) -> str | None:
        """The ``batch_id`` or ``run_id`` of the callback, as a string."""
        return self.payload.subject_id

    def __repr__(self) -> str:
        # The body and payload may hold customer data, the headers a signature: leave them out.
        return (
            f"CallbackContext(event={self.event!r}, subject_id={self.subject_id!r}, "
            f"secret_label={self.secret_label!r}, request_id={self.request_id!r}, "
            f"signed={self.signed!r}, key={self.key!r}, attempt={self.attempt!r}, "
            f"source={self.source!r}, body_bytes={len(self.body)})"
        )


def existing_callback(scope: Scope) -> CallbackContext | None:
    """The context an outer front door already stored for this request, if any."""
    state = scope.get("state")
    if state:
        known = state.get(STATE_KEY)
        if isinstance(known, CallbackContext):
            return known
    return None


def get_callback(request: HTTPConnection) -> CallbackContext:
    """The :class:`CallbackContext` the middleware stored for ``request``.

    Raises ``LookupError`` when the request did not go through
    :class:`~runflow_callbacks.asgi.CallbackMiddleware` (or
    :class:`~runflow_callbacks.receiver.CallbackReceiver`).
    """
    context = existing_callback(request.scope)
    if context is None:
        raise LookupError(
            "no verified Runflow callback on this request: is CallbackMiddleware configured "
            "for this path?"
        )
    return context
