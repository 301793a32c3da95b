"""The idempotency key policy of the exactly-once engine: which callbacks are "the same".

The engine computes the key once per callback (``ReceiverOptions.key``, :func:`default_key`
unless told otherwise) and stores the callback under it; every delivery of one batch's or
run's event shares it, so its handler runs once however often Runflow delivers it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from runflow_callbacks.errors import ConfigurationError

if TYPE_CHECKING:
    from runflow_callbacks.models import CallbackPayload

__all__ = ["MAX_KEY_CHARS", "KeyFunction", "check_key", "default_key"]

KeyFunction = Callable[["CallbackPayload", bytes], str]
"""Computes the idempotency key of a callback from its parsed payload and its body bytes."""

#: Longest idempotency key a store accepts.
MAX_KEY_CHARS: Final = 512


def default_key(payload: CallbackPayload, body: bytes) -> str:
    """The default idempotency key: ``"{kind}:{subject_id}:{event}"``.

    ``batch:0190...:batch.succeeded`` for a batch callback. A payload without both an id and
    an event is keyed by the SHA-256 of its exact body (``"sha256:<hex>"``), so identical
    bytes still deduplicate.
    """
    subject, event = payload.subject_id, payload.event
    if subject and event:
        return f"{payload.kind}:{subject}:{event}"
    return "sha256:" + hashlib.sha256(body).hexdigest()


def check_key(key: object) -> str:
    """Reject what cannot be an idempotency key (a custom key function's bad return value)."""
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"an idempotency key must be a non-empty str, not {key!r}")
    if len(key) > MAX_KEY_CHARS:
        raise ConfigurationError(
            f"an idempotency key must be at most {MAX_KEY_CHARS} characters, got {len(key)}"
        )
    return key
