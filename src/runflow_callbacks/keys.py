"""The idempotency key policy of the exactly-once engine: which callbacks are "the same".

The engine computes the key once per callback (``ReceiverOptions.key``, :func:`default_key`
unless told otherwise) and stores the callback under it; every delivery of one batch's or
run's event shares it, so its handler runs once however often Runflow delivers it.

Two rules make every verified callback recordable under a key that no other callback shares:

* :func:`default_key` escapes ``%`` and ``:`` inside each part, so the parts cannot run into
  each other (``{"event": "c", "batch_id": "a:b"}`` and ``{"event": "b:c", "batch_id": "a"}``
  are two callbacks). Ids and event names without those characters (every id and event
  Runflow sends) keep exactly the key 0.1 gave them, so stores written by 0.1 still
  deduplicate.
* :func:`bounded` shortens a key longer than :data:`MAX_KEY_CHARS` to a prefix plus the
  SHA-256 of the whole key: bounded, and distinct for distinct keys. The full event and id
  stay in the record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from runflow_callbacks.errors import ConfigurationError

if TYPE_CHECKING:
    from runflow_callbacks.models import CallbackPayload

__all__ = ["MAX_KEY_CHARS", "KeyFunction", "bounded", "check_key", "default_key"]

KeyFunction = Callable[["CallbackPayload", bytes], str]
"""Computes the idempotency key of a callback from its parsed payload and its body bytes."""

#: Length of the longest idempotency key a store is given (see :func:`bounded`).
MAX_KEY_CHARS: Final = 512
_DIGEST_MARK: Final = "~sha256:"
_KEPT_CHARS: Final = MAX_KEY_CHARS - len(_DIGEST_MARK) - 64
_ESCAPES: Final = str.maketrans({"%": "%25", ":": "%3A"})


def default_key(payload: CallbackPayload, body: bytes) -> str:
    """The default idempotency key: ``"{kind}:{subject_id}:{event}"``.

    ``batch:0190...:batch.succeeded`` for a batch callback; ``%`` and ``:`` inside the id or
    the event are written ``%25`` and ``%3A``, so no two callbacks share a key. A payload
    without both an id and an event is keyed by the SHA-256 of its exact body
    (``"sha256:<hex>"``), so identical bytes still deduplicate. The key is :func:`bounded`.
    """
    subject, event = payload.subject_id, payload.event
    if not (subject and event):
        return "sha256:" + hashlib.sha256(body).hexdigest()
    if "%" in subject or ":" in subject:
        subject = subject.translate(_ESCAPES)
    if "%" in event or ":" in event:
        event = event.translate(_ESCAPES)
    key = f"{payload.kind}:{subject}:{event}"
    return key if len(key) < MAX_KEY_CHARS else bounded(key)


def bounded(key: str) -> str:
    """``key`` itself when it is shorter than :data:`MAX_KEY_CHARS`; otherwise exactly
    ``MAX_KEY_CHARS`` characters: its first ones, ``~sha256:`` and the SHA-256 of the whole key
    (as UTF-8, lone surrogates kept). Kept keys are shorter than every bounded one, so the two
    kinds never meet, and distinct long keys get distinct digests."""
    if len(key) < MAX_KEY_CHARS:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return key[:_KEPT_CHARS] + _DIGEST_MARK + digest


def check_key(key: object) -> str:
    """The key a store is given: a custom key function's value checked (a non-empty str),
    then :func:`bounded`."""
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"an idempotency key must be a non-empty str, not {key!r}")
    return bounded(key)
