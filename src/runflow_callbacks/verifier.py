"""Verify ``Runflow-Signature`` over the raw body bytes.

Runflow signs every callback with HMAC-SHA256 over the exact request body; the key is the
callback secret string (``whsec_...``, prefix included) encoded as UTF-8, and the header is the
64-digit lowercase hex digest. Nothing here imports a web framework or pydantic.

>>> body = b'{"event": "run.completed"}'
>>> signature = sign(body, "whsec_example")
>>> verify(body, signature, ["whsec_old", "whsec_example"]).position
1
>>> is_valid(body + b" ", signature, "whsec_example")
False

The primary call, :func:`verify`, raises; :func:`is_valid` is the boolean convenience.
For bodies that arrive in chunks use :class:`IncrementalVerifier` (or
:meth:`Verifier.incremental`), which feeds every configured secret in one pass over the data.
"""

from __future__ import annotations

import functools
import hmac as _std_hmac
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final, TypeAlias

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _crypto_hmac

from runflow_callbacks.errors import (
    ConfigurationError,
    MalformedSignatureError,
    MissingSignatureError,
    SignatureMismatchError,
    VerificationError,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "SIGNATURE_HEADER",
    "Body",
    "IncrementalVerifier",
    "Secret",
    "SecretsInput",
    "Verifier",
    "is_valid",
    "normalize_secrets",
    "parse_signature",
    "sign",
    "verify",
]

SIGNATURE_HEADER: Final = "Runflow-Signature"
_DIGEST_SIZE: Final = 32
_HEX_SIZE: Final = 64
_SHA256: Final = hashes.SHA256()
_WHSEC: Final = "whsec_"
_SHOWN_CHARS: Final = 4
_ASCII_WS: Final = " \t\r\n\x0b\x0c"
_BODY_TYPES: Final = (bytes, bytearray, memoryview)


def _keyed_mac(key: bytes) -> _crypto_hmac.HMAC:
    """The HMAC-SHA256 primitive: a context keyed once, to be ``.copy()``-ed per message."""
    return _crypto_hmac.HMAC(key, _SHA256)


class Secret:
    """A callback secret, with an optional ``id`` (Runflow's secret uuid) and ``label``.

    The value is used exactly as given (UTF-8 bytes, ``whsec_`` prefix included), unless
    ``key`` gives the HMAC key bytes another way (an org-level webhook's secret, base64-decoded:
    see :func:`runflow_callbacks.webhooks.webhook_secret`). ``repr()`` and
    ``str()`` show at most the ``whsec_`` prefix and four characters; read the value with
    :meth:`reveal` when it really must leave the object.

    >>> Secret("whsec_0123456789abcdef0123", label="current")
    Secret('whsec_0123…', label='current')
    """

    __slots__ = ("_key", "_mac", "_value", "id", "label", "position")

    def __init__(
        self,
        value: str,
        *,
        id: str | None = None,  # noqa: A002 - mirrors Runflow's field name
        label: str | None = None,
        key: bytes | None = None,
    ) -> None:
        if not isinstance(value, str):
            raise ConfigurationError(
                f"a callback secret must be a str (the plain_secret Runflow returned), "
                f"not {type(value).__name__}"
            )
        if not value:
            raise ConfigurationError("a callback secret must not be empty")
        if value.strip(_ASCII_WS) != value:
            raise ConfigurationError(
                "a callback secret must not start or end with whitespace "
                "(was it read from a file or environment variable with a trailing newline?)"
            )
        given: object = key  # callers may be untyped
        if given is not None and (not isinstance(given, bytes) or not given):
            raise ConfigurationError("a secret's key must be non-empty bytes")
        self._value = value
        self._key = value.encode("utf-8") if key is None else key
        self._mac = _keyed_mac(self._key)
        self.id = id
        self.label = label
        #: Index of this secret in the list it was configured in (set by ``normalize_secrets``).
        self.position: int = 0

    def reveal(self) -> str:
        """Return the secret value itself. Never log what this returns."""
        return self._value

    @property
    def name(self) -> str:
        """How logs and answers refer to this secret: its label, else its id, else its position."""
        return self.label or self.id or f"#{self.position}"

    def mac(self) -> _crypto_hmac.HMAC:
        """A fresh HMAC-SHA256 context keyed with this secret (the key schedule is reused)."""
        return self._mac.copy()

    def _with_position(self, position: int) -> Secret:
        if self.position == position:
            return self
        clone = Secret.__new__(Secret)
        clone._value = self._value
        clone._key = self._key
        clone._mac = self._mac
        clone.id = self.id
        clone.label = self.label
        clone.position = position
        return clone

    def __repr__(self) -> str:
        parts = [repr(_mask(self._value))]
        if self.id is not None:
            parts.append(f"id={self.id!r}")
        if self.label is not None:
            parts.append(f"label={self.label!r}")
        return f"Secret({', '.join(parts)})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return (
            _std_hmac.compare_digest(self._value.encode(), other._value.encode())
            and _std_hmac.compare_digest(self._key, other._key)
            and self.id == other.id
        )

    def __hash__(self) -> int:
        return hash((Secret, self.id, len(self._value)))

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("Secret objects are not picklable (that would write the secret out)")


def _mask(value: str) -> str:
    prefix = _WHSEC if value.startswith(_WHSEC) else ""
    rest = value[len(prefix) :]
    shown = min(_SHOWN_CHARS, len(rest) // 4)
    return f"{prefix}{rest[:shown]}…"


Body: TypeAlias = bytes | bytearray | memoryview
"""Raw body bytes as a web framework hands them over (never a decoded ``str``)."""

SecretsInput: TypeAlias = str | Secret | Sequence[str | Secret]
"""One secret, or several during a rotation (each is tried in the order given)."""


@functools.lru_cache(maxsize=256)
def _secret_from_str(value: str) -> Secret:
    # Keying an HMAC costs more than hashing a 1 KiB body; keep the keyed context per string.
    return Secret(value)


@functools.lru_cache(maxsize=64)
def _secrets_from_strs(values: tuple[str, ...]) -> tuple[Secret, ...]:
    # A rotation list of strings passed on every call costs one cache lookup.
    return tuple(_secret_from_str(value)._with_position(i) for i, value in enumerate(values))


def _one_secret(item: object) -> Secret:
    if isinstance(item, Secret):
        return item
    if isinstance(item, str):
        return _secret_from_str(item)
    raise ConfigurationError(
        f"a callback secret must be a str or Secret, not {type(item).__name__}"
    )


def normalize_secrets(secrets: SecretsInput | Iterable[str | Secret]) -> tuple[Secret, ...]:
    """Turn one secret or a sequence of them into a tuple of :class:`Secret`.

    Raises :class:`ConfigurationError` for an empty list, an empty value or a non-string.
    """
    if isinstance(secrets, (str, Secret)):
        return (_one_secret(secrets),)
    if isinstance(secrets, (bytes, bytearray, memoryview)):
        raise ConfigurationError("a callback secret must be a str (decode it first), not bytes")
    try:
        items = tuple(secrets)
    except TypeError:
        raise ConfigurationError(
            f"secrets must be a str, a Secret or a sequence of them, not {type(secrets).__name__}"
        ) from None
    if not items:
        raise ConfigurationError("at least one callback secret is required")
    if all(type(item) is str for item in items):
        return _secrets_from_strs(items)
    return tuple(_one_secret(item)._with_position(i) for i, item in enumerate(items))


def sign(body: Body, secret: str | Secret) -> str:
    """Return the ``Runflow-Signature`` value for ``body``: lowercase hex HMAC-SHA256.

    ``sign`` is the exact inverse of :func:`verify`.
    """
    _check_body(body)
    mac = _one_secret(secret).mac()
    mac.update(body)
    return mac.finalize().hex()


def _check_body(body: object) -> None:
    if type(body) is bytes:
        return
    if isinstance(body, memoryview) and not (body.contiguous and body.itemsize == 1):
        raise TypeError("a memoryview body must be contiguous bytes (use .tobytes())")
    if not isinstance(body, _BODY_TYPES):
        if isinstance(body, str):
            raise TypeError(
                "pass the raw request body as bytes (request.body(), request.data, "
                "request.get_data()); a decoded or re-serialized str cannot be verified"
            )
        raise TypeError(f"the body must be bytes, not {type(body).__name__}")


def parse_signature(signature: str | bytes | None) -> bytes:
    """Parse a ``Runflow-Signature`` header value into the 32-byte digest.

    Surrounding whitespace is ignored and either hex case is accepted; anything else raises
    :class:`MissingSignatureError` or :class:`MalformedSignatureError`, never a standard
    library exception.
    """
    # Fast path: exactly 64 characters that are all hex digits.
    if type(signature) is str and len(signature) == _HEX_SIZE:
        try:
            digest = bytes.fromhex(signature)
        except ValueError:
            pass
        else:
            if len(digest) == _DIGEST_SIZE:
                return digest
    return _parse_signature_slow(signature)


_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


def _parse_signature_slow(signature: object) -> bytes:
    if signature is None:
        raise MissingSignatureError
    if isinstance(signature, (bytes, bytearray, memoryview)):
        raw = bytes(signature)
        if not raw.strip(_ASCII_WS.encode()):
            raise MissingSignatureError
        if not raw.isascii():
            raise MalformedSignatureError("non_ascii", length=len(raw.strip()))
        text = raw.decode("ascii")
    elif isinstance(signature, str):
        text = signature
    else:
        raise MalformedSignatureError("non_hex", length=0)
    text = text.strip(_ASCII_WS)
    if not text:
        raise MissingSignatureError
    if not text.isascii():
        raise MalformedSignatureError("non_ascii", length=len(text))
    head, sep, tail = text.partition("=")
    if sep and head and all(c.isalnum() or c == "-" for c in head) and tail:
        raise MalformedSignatureError("prefix", length=len(text))
    if "," in text and len(text) > _HEX_SIZE:
        # A proxy folded repeated headers into one ("<hex>, <hex>"): say so, not "length".
        raise MalformedSignatureError("multiple", length=len(text))
    if len(text) != _HEX_SIZE:
        raise MalformedSignatureError("length", length=len(text))
    if not _HEX_DIGITS.issuperset(text):
        raise MalformedSignatureError("non_hex", length=len(text))
    return bytes.fromhex(text)


def verify(body: Body, signature: str | bytes | None, secrets: SecretsInput) -> Secret:
    """Verify ``signature`` over ``body`` with each of ``secrets``; return the one that matched.

    Raises :class:`MissingSignatureError`, :class:`MalformedSignatureError` or
    :class:`SignatureMismatchError` (all :class:`VerificationError`). A ``str`` body raises
    ``TypeError``: pass the raw bytes exactly as received.

    >>> verify(b"{}", sign(b"{}", "whsec_a"), "whsec_a")
    Secret('whsec_…')
    """
    _check_body(body)
    configured = (
        (_secret_from_str(secrets),) if type(secrets) is str else normalize_secrets(secrets)
    )
    return _verify_digest(body, parse_signature(signature), configured)


def _verify_digest(body: Body, expected: bytes, configured: tuple[Secret, ...]) -> Secret:
    compare = _std_hmac.compare_digest
    for secret in configured:
        mac = secret._mac.copy()
        mac.update(body)
        if compare(mac.finalize(), expected):
            return secret
    raise SignatureMismatchError(secrets_tried=len(configured))


def is_valid(body: Body, signature: str | bytes | None, secrets: SecretsInput) -> bool:
    """Return True when :func:`verify` would succeed. Prefer ``verify`` in request handlers."""
    try:
        verify(body, signature, secrets)
    except VerificationError:
        return False
    return True


class IncrementalVerifier:
    """Verify a body that arrives in chunks, without joining them.

    Every chunk is fed to one HMAC context per configured secret, so the data is read once.

    >>> v = IncrementalVerifier(["whsec_old", "whsec_new"])
    >>> for chunk in (b'{"a"', b': 1}'):
    ...     v.update(chunk)
    >>> v.verify(sign(b'{"a": 1}', "whsec_new")).position
    1
    """

    __slots__ = ("_digests", "_macs", "_secrets", "bytes_received")

    def __init__(self, secrets: SecretsInput | tuple[Secret, ...]) -> None:
        self._secrets = normalize_secrets(secrets)
        self._macs = [secret.mac() for secret in self._secrets]
        self._digests: list[bytes] | None = None
        #: Total number of body bytes fed so far.
        self.bytes_received = 0

    @property
    def secrets(self) -> tuple[Secret, ...]:
        return self._secrets

    def update(self, chunk: Body) -> None:
        """Feed the next chunk of the body."""
        if self._digests is not None:
            raise RuntimeError("update() called after verify(): start a new IncrementalVerifier")
        _check_body(chunk)
        for mac in self._macs:
            mac.update(chunk)
        self.bytes_received += len(chunk)

    def verify(self, signature: str | bytes | None) -> Secret:
        """Check the header against the bytes fed so far; return the matching secret."""
        return self.verify_digest(parse_signature(signature))

    def verify_digest(self, expected: bytes) -> Secret:
        """Like :meth:`verify`, for a header already parsed by :func:`parse_signature`."""
        if self._digests is None:
            self._digests = [mac.finalize() for mac in self._macs]
        for secret, digest in zip(self._secrets, self._digests, strict=False):
            if _std_hmac.compare_digest(digest, expected):
                return secret
        raise SignatureMismatchError(secrets_tried=len(self._secrets))

    def is_valid(self, signature: str | bytes | None) -> bool:
        try:
            self.verify(signature)
        except VerificationError:
            return False
        return True


class Verifier:
    """A set of secrets configured once, for verifying many callbacks.

    >>> verifier = Verifier([Secret("whsec_old", label="old"), Secret("whsec_new", label="new")])
    >>> verifier.verify(b"{}", sign(b"{}", "whsec_new")).label
    'new'
    """

    __slots__ = ("secrets",)

    def __init__(self, secrets: SecretsInput) -> None:
        self.secrets: tuple[Secret, ...] = normalize_secrets(secrets)

    def verify(self, body: Body, signature: str | bytes | None) -> Secret:
        _check_body(body)
        return _verify_digest(body, parse_signature(signature), self.secrets)

    def verify_digest(self, body: Body, expected: bytes) -> Secret:
        """Like :meth:`verify`, for a header already parsed by :func:`parse_signature`
        (a reader that checks the header before the body arrives parses it once)."""
        return _verify_digest(body, expected, self.secrets)

    def is_valid(self, body: Body, signature: str | bytes | None) -> bool:
        try:
            self.verify(body, signature)
        except VerificationError:
            return False
        return True

    def incremental(self) -> IncrementalVerifier:
        """A fresh :class:`IncrementalVerifier` over these secrets."""
        return IncrementalVerifier(self.secrets)

    def __repr__(self) -> str:
        return f"Verifier({list(self.secrets)!r})"

    @classmethod
    def from_env(cls, variable: str = "RUNFLOW_CALLBACK_SECRETS") -> Self:
        """Build from a comma-separated environment variable (empty items are ignored)."""
        import os  # noqa: PLC0415 - only this constructor reads the environment

        raw = os.environ.get(variable, "")
        values = [item.strip() for item in raw.split(",") if item.strip()]
        if not values:
            raise ConfigurationError(f"{variable} is not set or holds no secret")
        return cls(values)
