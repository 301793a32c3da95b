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

    from runflow_callbacks.verifier import SecretsInput

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


def _strip_newline(body: bytes) -> bytes | None:
    stripped = body.rstrip(b"\r\n")
    return stripped if stripped != body else None


def _plus_zero(body: bytes) -> bytes | None:
    repaired = _Z_TIMESTAMP.sub(rb'\1+00:00"', body)
    return repaired if repaired != body else None


def _loads(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _reserialize(body: bytes) -> Iterator[bytes]:
    data = _loads(body)
    if data is None:
        return
    yield json.dumps(data).encode()
    if isinstance(data, dict):
        yield json.dumps(payload_to_dict(data)).encode()


# Each repair: (code, message, candidate bodies). Earlier repairs are the more specific ones.
_REPAIRS: Final[tuple[tuple[str, str, Callable[[bytes], Iterator[bytes]]], ...]] = (
    (
        "trailing_newline",
        "the signature matches once the trailing newline is removed: an editor, `echo` or a "
        "proxy added it; verify the raw request bytes exactly as received",
        lambda body: iter(filter(None, [_strip_newline(body)])),
    ),
    (
        "z_timestamps",
        "the signature matches once `Z` timestamps are written as `+00:00` like Runflow "
        "writes them" + _REWRITTEN,
        lambda body: iter(filter(None, [_plus_zero(body)])),
    ),
    (
        "reserialized",
        "the signature matches once the JSON is written the way Runflow writes it "
        "(json.dumps defaults, its field order)" + _REWRITTEN,
        _reserialize,
    ),
    (
        "z_timestamps_reserialized",
        "the signature matches once the JSON is written the way Runflow writes it, with "
        "`+00:00` instead of `Z` in timestamps" + _REWRITTEN,
        lambda body: _reserialize(_plus_zero(body) or b""),
    ),
)


def diagnose_mismatch(
    body: bytes, signature: str | bytes | None, secrets: SecretsInput
) -> MismatchHint | None:
    """Find a common rewrite of ``body`` (or of a secret) under which ``signature`` matches.

    Call it after :func:`~runflow_callbacks.verifier.verify` raised
    :class:`~runflow_callbacks.errors.SignatureMismatchError`. Returns None when no known
    rewrite explains the mismatch (then the secret is the likely cause). Tries a handful of
    candidates, each one HMAC per secret; meant for debugging, not for the request path.
    """
    configured = normalize_secrets(secrets)
    verifier = Verifier(configured)
    for code, message, candidates in _REPAIRS:
        for candidate in candidates(body):
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
            Verifier(prefixed).verify(body, signature)
        except VerificationError:
            continue
        return MismatchHint(
            "secret_prefix",
            f"the signature matches with secret {secret.name} once 'whsec_' is put in front: "
            "use the secret exactly as Runflow returned it, prefix included",
            secret,
        )
    return None
