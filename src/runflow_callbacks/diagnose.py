"""Explain a signature mismatch: was the body rewritten on its way to the receiver?

Runflow signs the exact bytes it sends. When a signature does not match, the usual cause is not
a wrong secret but something between Runflow and the code that verifies (a framework, a proxy, a
log-and-replay tool, an editor) that rewrote the body. :func:`diagnose_mismatch` undoes the
common rewrites one by one and says which one makes the signature match.

>>> from runflow_callbacks.verifier import sign
>>> body = b'{"created_at": "2026-05-06T10:00:00+00:00"}'
>>> signature = sign(body, "whsec_example")
>>> diagnose_mismatch(b'{"created_at": "2026-05-06T10:00:00Z"}', signature, "whsec_example").code
'z_timestamps'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from runflow_callbacks.errors import VerificationError
from runflow_callbacks.verifier import Secret, Verifier, normalize_secrets
from runflow_callbacks.wire import payload_to_dict

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from runflow_callbacks.verifier import Body, SecretsInput

__all__ = ["MismatchHint", "diagnose_mismatch"]

_Z_TIMESTAMP: Final = re.compile(rb'(\d{2}:\d{2}:\d{2}(?:\.\d+)?)Z"')
_WHSEC: Final = "whsec_"


@dataclass(frozen=True)
class MismatchHint:
    """What made the signature match: ``code`` for programs, ``message`` for people."""

    code: str
    message: str
    #: The secret that matched the repaired body (or the repaired secret).
    secret: Secret

    def __str__(self) -> str:
        return self.message


_REWRITTEN: Final = (
    ": something between Runflow and the verifier re-serialized the body; verify the raw "
    "request bytes exactly as received"
)


def _without_trailing_newline(body: bytes) -> Iterator[bytes]:
    stripped = body.rstrip(b"\r\n")
    if stripped != body:
        yield stripped


def _with_plus_zero(body: bytes) -> Iterator[bytes]:
    repaired = _Z_TIMESTAMP.sub(rb'\1+00:00"', body)
    if repaired != body:
        yield repaired


def _reserialized(body: bytes) -> Iterator[bytes]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return
    yield json.dumps(data).encode()
    if isinstance(data, dict):
        yield json.dumps(payload_to_dict(data)).encode()


def _with_plus_zero_reserialized(body: bytes) -> Iterator[bytes]:
    for repaired in _with_plus_zero(body):
        yield from _reserialized(repaired)


# Each repair: (code, message, candidate bodies). Earlier repairs are the more specific ones.
_REPAIRS: Final[tuple[tuple[str, str, Callable[[bytes], Iterator[bytes]]], ...]] = (
    (
        "trailing_newline",
        "the signature matches once the trailing newline is removed: an editor, `echo` or a "
        "proxy added it; verify the raw request bytes exactly as received",
        _without_trailing_newline,
    ),
    (
        "z_timestamps",
        "the signature matches once `Z` timestamps are written as `+00:00` like Runflow "
        "writes them" + _REWRITTEN,
        _with_plus_zero,
    ),
    (
        "reserialized",
        "the signature matches once the JSON is written the way Runflow writes it "
        "(json.dumps defaults, its field order)" + _REWRITTEN,
        _reserialized,
    ),
    (
        "z_timestamps_reserialized",
        "the signature matches once the JSON is written the way Runflow writes it, with "
        "`+00:00` instead of `Z` in timestamps" + _REWRITTEN,
        _with_plus_zero_reserialized,
    ),
)


def diagnose_mismatch(
    body: Body, signature: str | bytes | None, secrets: SecretsInput
) -> MismatchHint | None:
    """Find a common rewrite of ``body`` (or of a secret) under which ``signature`` matches.

    Call it after :func:`~runflow_callbacks.verifier.verify` raised
    :class:`~runflow_callbacks.errors.SignatureMismatchError`. Returns None when no known
    rewrite explains the mismatch (then the secret is the likely cause). Tries a handful of
    candidates, each one HMAC per secret; meant for debugging, not for the request path.
    """
    raw = bytes(body)
    configured = normalize_secrets(secrets)
    verifier = Verifier(configured)
    for code, message, candidates in _REPAIRS:
        for candidate in candidates(raw):
            try:
                secret = verifier.verify(candidate, signature)
            except VerificationError:
                continue
            return MismatchHint(code, message, secret)
    for secret in configured:
        value = secret.reveal()
        if value.startswith(_WHSEC):
            continue
        prefixed = Secret(_WHSEC + value, id=secret.id, label=secret.label)
        prefixed.position = secret.position
        try:
            Verifier(prefixed).verify(raw, signature)
        except VerificationError:
            continue
        return MismatchHint(
            "secret_prefix",
            f"the signature matches with secret {secret.name} once 'whsec_' is put in front: "
            "use the secret exactly as Runflow returned it, prefix included",
            secret,
        )
    return None
