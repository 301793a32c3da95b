"""Signed callback requests as Runflow sends them, and ways to break them for negative tests.

>>> request = signed_request(b'{"event": "run.completed"}', "whsec_test_secret")
>>> sorted(request.headers)
['Content-Type', 'Runflow-Request-Id', 'Runflow-Signature']
>>> compact(request).body == request.body
False

Every tamper helper returns a new :class:`SignedRequest` whose signature no longer matches what
a correct receiver expects (``flip_byte``, ``with_z_timestamps``, ``compact``: same signature,
different bytes; ``signed_with``: right bytes, another secret; ``without_signature``: no header).

``Runflow-Request-Id`` is a fresh UUID for every request (and, in the fake Runflow, for every
attempt): Runflow does not document whether it changes per attempt, so we chose per attempt.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.verifier import SIGNATURE_HEADER, Secret, sign
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydantic import BaseModel

__all__ = [
    "REQUEST_ID_HEADER",
    "SignedRequest",
    "compact",
    "flip_byte",
    "signed_request",
    "signed_with",
    "with_z_timestamps",
    "without_signature",
]

REQUEST_ID_HEADER: Final = "Runflow-Request-Id"
_UTC_SUFFIX: Final = re.compile(r"^(\d{4}-\d{2}-\d{2}T[0-9:.]+)\+00:00$")


@dataclass(frozen=True)
class SignedRequest:
    """The body bytes and headers of one callback request.

    Post it with any client: ``client.post(url, content=request.body, headers=request.headers)``.
    """

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def signature(self) -> str | None:
        """The ``Runflow-Signature`` header (None when the request is unsigned)."""
        return self.headers.get(SIGNATURE_HEADER)

    @property
    def request_id(self) -> str | None:
        """The ``Runflow-Request-Id`` header."""
        return self.headers.get(REQUEST_ID_HEADER)

    def json(self) -> Any:
        """The body parsed as JSON (for assertions; a receiver verifies the bytes instead)."""
        return json.loads(self.body)

    def with_body(self, body: bytes) -> SignedRequest:
        """The same headers (so the same signature) over other bytes."""
        return SignedRequest(body=bytes(body), headers=dict(self.headers))


def _body_of(payload_or_bytes: BaseModel | Mapping[str, Any] | bytes | bytearray) -> bytes:
    if isinstance(payload_or_bytes, (bytes, bytearray)):
        return bytes(payload_or_bytes)
    if isinstance(cast("object", payload_or_bytes), str):
        raise ConfigurationError("signed_request() takes bytes or a payload, not str (encode it)")
    return dumps_payload(payload_or_bytes)


def signed_request(
    payload_or_bytes: BaseModel | Mapping[str, Any] | bytes | bytearray,
    secret: str | Secret | None,
    *,
    request_id: str | None = None,
) -> SignedRequest:
    """A callback request as Runflow sends it.

    A payload (model or mapping) is written with :func:`~runflow_callbacks.wire.dumps_payload`;
    bytes are sent as they are. ``secret=None`` builds the unsigned request of an organization
    that has no callback secret yet. ``request_id`` defaults to a fresh UUID.
    """
    body = _body_of(payload_or_bytes)
    headers = {
        "Content-Type": "application/json",
        REQUEST_ID_HEADER: request_id if request_id is not None else str(uuid.uuid4()),
    }
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    return SignedRequest(body=body, headers=headers)


def flip_byte(request: SignedRequest, *, index: int | None = None) -> SignedRequest:
    """Flip the lowest bit of one body byte (the middle one by default); keep the signature."""
    if not request.body:
        raise ConfigurationError("cannot flip a byte of an empty body")
    position = len(request.body) // 2 if index is None else index
    if not -len(request.body) <= position < len(request.body):
        raise ConfigurationError(f"index {position} is outside a {len(request.body)}-byte body")
    body = bytearray(request.body)
    body[position] ^= 0x01
    return request.with_body(bytes(body))


def _json_body(request: SignedRequest) -> Any:
    try:
        return json.loads(request.body)
    except ValueError:
        raise ConfigurationError("the request body is not JSON; cannot re-serialize it") from None


def _to_z(value: Any) -> Any:
    if isinstance(value, str):
        return _UTC_SUFFIX.sub(r"\1Z", value)
    if isinstance(value, dict):
        return {key: _to_z(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_z(item) for item in value]
    return value


def with_z_timestamps(request: SignedRequest) -> SignedRequest:
    """Re-serialize with ``Z`` instead of ``+00:00`` in every UTC timestamp; keep the signature.

    This is what a framework that re-serializes a parsed body produces.
    """
    body = json.dumps(_to_z(_json_body(request))).encode("utf-8")
    if body == request.body:
        raise ConfigurationError("the body has no +00:00 timestamp to rewrite")
    return request.with_body(body)


def compact(request: SignedRequest) -> SignedRequest:
    """Re-serialize without spaces (``","`` and ``":"``); keep the signature."""
    body = json.dumps(_json_body(request), separators=(",", ":")).encode("utf-8")
    if body == request.body:
        raise ConfigurationError("the body is already compact")
    return request.with_body(body)


def signed_with(request: SignedRequest, secret: str | Secret) -> SignedRequest:
    """The same bytes signed with another secret (for example a revoked or foreign one)."""
    headers = dict(request.headers)
    headers[SIGNATURE_HEADER] = sign(request.body, secret)
    return SignedRequest(body=request.body, headers=headers)


def without_signature(request: SignedRequest) -> SignedRequest:
    """The same request without its ``Runflow-Signature`` header."""
    headers = {k: v for k, v in request.headers.items() if k != SIGNATURE_HEADER}
    return SignedRequest(body=request.body, headers=headers)
