"""The one thing every handler receives: :class:`CallbackContext`.

Whatever ran the handler (the middleware, the receiver with or without a store, the inbox
worker, ``inbox retry``, ``reconcile``), it gets a ``CallbackContext``: the typed payload, the
exact verified bytes, the Runflow headers as sent, the matched secret, the request id and,
when a store is involved, the idempotency key, the attempt number and what started this run.

``CallbackContext`` is generic in its payload: ``CallbackContext[BatchCallbackPayload]`` is
what a handler of ``batch.*`` events receives (see
:meth:`~runflow_callbacks.receiver.CallbackReceiver.on`), and a bare ``CallbackContext`` means
any payload (:data:`~runflow_callbacks.models.AnyCallbackPayload`).
"""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass
from typing import TYPE_CHECKING, Final, Generic, Literal, NoReturn

from typing_extensions import TypeVar

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from starlette.requests import HTTPConnection
    from starlette.types import Scope

    from runflow_callbacks.models import AnyCallbackPayload, CallbackPayload

__all__ = [
    "STATE_KEY",
    "CallbackContext",
    "PayloadT_co",
    "RunSource",
    "existing_callback",
    "get_callback",
]

RunSource = Literal["http", "retry", "reconcile"]
"""What started a handler run: a delivery over HTTP (also when an inbox worker runs it later),
``inbox retry`` (:meth:`~runflow_callbacks.processing.CallbackProcessor.retry`), or
reconciliation from Runflow's delivery history."""

#: Key of the :class:`CallbackContext` in ``scope["state"]`` (``request.state.runflow_callback``).
STATE_KEY: Final = "runflow_callback"

PayloadT_co = TypeVar(
    "PayloadT_co", bound="CallbackPayload", covariant=True, default="AnyCallbackPayload"
)
"""The payload type of a :class:`CallbackContext`; a bare ``CallbackContext`` is
``CallbackContext[AnyCallbackPayload]``. Covariant: a ``CallbackContext[BatchCallbackPayload]``
is a ``CallbackContext``, so a handler of any payload serves batch events too."""


@dataclass(frozen=True, slots=True)
class CallbackContext(Generic[PayloadT_co]):
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

    payload: PayloadT_co
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


def _refuse_assignment(self: object, name: str, value: object) -> NoReturn:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _refuse_deletion(self: object, name: str) -> NoReturn:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


# Before Python 3.13, the __setattr__ of a frozen slots dataclass raises TypeError instead of
# FrozenInstanceError for a name that is not a field, so ``CallbackContext[P](...)`` failed
# where typing sets ``__orig_class__`` (it ignores only AttributeError). Refuse every change
# the way 3.13 does. __init__ and dataclasses.replace() set the fields with object.__setattr__.
CallbackContext.__setattr__ = _refuse_assignment  # type: ignore[method-assign] # see above
CallbackContext.__delattr__ = _refuse_deletion  # type: ignore[method-assign] # see above


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
