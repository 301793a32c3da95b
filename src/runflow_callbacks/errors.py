"""Every exception runflow-callbacks raises.

::

    RunflowCallbackError                  base of everything below
    ├── ConfigurationError (ValueError)   bad secrets, options or store URLs given by the caller
    ├── VerificationError                 the request cannot be trusted (answer 401)
    │   ├── MissingSignatureError         no Runflow-Signature header, or an empty one
    │   ├── MalformedSignatureError       not exactly 64 hex digits (``reason`` says why)
    │   └── SignatureMismatchError        well formed, but no configured secret produced it
    ├── InvalidPayloadError               verified bytes that are not a JSON object (answer 400)
    ├── PayloadTooLargeError              a body over ``max_body_bytes`` (answer 413)
    ├── RequestTimeoutError               a body not complete within ``body_timeout`` (408)
    ├── OverloadedError                   unverified bodies already hold their budget (503)
    ├── ClientDisconnectedError           the client left mid-body (control flow: nothing to answer)
    ├── StoreError                        a backend could not record or read a callback (503)
    │   └── UnknownCallbackError (LookupError)  no callback is recorded under ``key``
    ├── HandOffError                      the queue engine did not take the job (503)
    └── RunflowAPIError                   the Runflow API answered an error (client only)

Every class has a ``code``: the short machine-readable reason that answers and logs carry
(:mod:`runflow_callbacks.answers` maps it to an HTTP status). Each level adds attributes, not
prose. No exception carries a secret value, a computed
signature or a payload: messages say *what* failed and how many secrets were tried.
"""

from __future__ import annotations

TYPE_CHECKING = False  # importing typing costs a short command's start-up; checkers see True
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "ClientDisconnectedError",
    "ConfigurationError",
    "HandOffError",
    "InvalidPayloadError",
    "MalformedSignatureError",
    "MissingSignatureError",
    "OverloadedError",
    "PayloadTooLargeError",
    "RequestTimeoutError",
    "RunflowAPIError",
    "RunflowCallbackError",
    "SignatureMismatchError",
    "StoreError",
    "UnknownCallbackError",
    "VerificationError",
]


class RunflowCallbackError(Exception):
    """Base class of every error raised by runflow-callbacks.

    ``code`` is a short machine-readable reason, one per class (a :class:`RunflowAPIError`
    carries the code Runflow answered).
    """

    code: str = "error"


class ConfigurationError(RunflowCallbackError, ValueError):
    """The caller configured something impossible (an empty secret, a bad store URL...)."""

    code = "configuration_error"


class VerificationError(RunflowCallbackError):
    """The callback's signature could not be verified; the request must be rejected (401).

    ``code`` is a short machine-readable reason used in HTTP answers and logs.
    """

    code: str = "verification_failed"


class MissingSignatureError(VerificationError):
    """The request carried no ``Runflow-Signature`` header, or an empty one."""

    code = "missing_signature"

    def __init__(self, message: str = "the Runflow-Signature header is missing or empty") -> None:
        super().__init__(message)


class MalformedSignatureError(VerificationError):
    """The header is present but is not exactly 64 hexadecimal digits.

    ``reason`` is one of ``"length"``, ``"non_hex"``, ``"non_ascii"``, ``"prefix"``,
    ``"multiple"``; ``length`` is the trimmed length of what was received (never its content).
    """

    code = "malformed_signature"

    def __init__(self, reason: str, *, length: int) -> None:
        self.reason = reason
        self.length = length
        super().__init__(_MALFORMED_MESSAGES.get(reason, reason).format(length=length))


_MALFORMED_MESSAGES = {
    "length": "Runflow-Signature must be 64 hex digits, got {length} characters",
    "non_hex": "Runflow-Signature contains characters that are not hex digits",
    "non_ascii": "Runflow-Signature contains non-ASCII bytes",
    "prefix": "Runflow-Signature is a bare hex digest; drop the 'sha256=' style prefix",
    "multiple": "more than one Runflow-Signature header was sent",
}


class SignatureMismatchError(VerificationError):
    """The signature is well formed but none of the configured secrets produced it.

    ``secrets_tried`` says how many secrets were tried.
    """

    code = "signature_mismatch"

    def __init__(self, *, secrets_tried: int) -> None:
        self.secrets_tried = secrets_tried
        noun = "secret" if secrets_tried == 1 else "secrets"
        super().__init__(
            f"Runflow-Signature does not match the body under any of {secrets_tried} {noun} tried"
        )


class InvalidPayloadError(RunflowCallbackError):
    """Verified bytes that are not a JSON object of a known shape (answer 400).

    ``errors`` holds pydantic's error list when validation failed (values are not included).
    """

    code = "invalid_payload"

    def __init__(self, message: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        self.errors = errors or []
        super().__init__(message)


class PayloadTooLargeError(RunflowCallbackError):
    """A body larger than the configured ``max_body_bytes`` (answer 413)."""

    code = "payload_too_large"

    def __init__(self, *, limit: int, received: int | None = None) -> None:
        self.limit = limit
        self.received = received
        super().__init__(f"callback body exceeds the limit of {limit} bytes")


class RequestTimeoutError(RunflowCallbackError):
    """The body did not arrive within ``body_timeout`` (answer 408): a slow or stalled client
    holds no memory and no connection slot for longer than that."""

    code = "request_timeout"

    def __init__(self, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(f"the callback body did not arrive within {timeout_s:g} s")


class OverloadedError(RunflowCallbackError):
    """The bodies not yet verified already hold ``max_unverified_bytes`` (answer 503, so
    Runflow retries): unauthenticated requests cannot pin more memory than that."""

    code = "overloaded"

    def __init__(self, *, budget: int) -> None:
        self.budget = budget
        super().__init__(
            f"too many callback bodies are being received at once (budget {budget} bytes); "
            "retry later"
        )


class ClientDisconnectedError(RunflowCallbackError):
    """The client went away before the whole body arrived: nothing to answer, nothing to run.

    Control flow between the reader and a front door, which ends the request quietly.
    """

    code = "client_disconnected"


class StoreError(RunflowCallbackError):
    """A store backend failed to record or read a callback (answered 503: Runflow retries)."""

    code = "store_unavailable"


class HandOffError(RunflowCallbackError):
    """The queue engine did not take the job (answered 503 ``queue_unavailable``).

    The callback may be recorded already; Runflow's retry queues it again.
    """

    code = "queue_unavailable"


class UnknownCallbackError(StoreError, LookupError):
    """No callback is recorded under the given key (``key`` says which)."""

    code = "unknown_callback"

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no callback is recorded under key {key!r}")


class RunflowAPIError(RunflowCallbackError):
    """The Runflow API answered with an error.

    Carries the HTTP ``status`` and Runflow's error body fields ``api_code``, ``message`` and
    ``errors`` (each may be None when the body was not Runflow's error shape). ``code`` is
    Runflow's code when it sent one, else ``"runflow_api_error"``.
    """

    def __init__(
        self,
        *,
        status: int,
        code: str | None = None,
        message: str | None = None,
        errors: Any = None,
    ) -> None:
        self.status = status
        self.api_code = code
        self.code = code or "runflow_api_error"
        self.message = message
        self.errors = errors
        text = f"Runflow API answered {status}"
        if code:
            text += f" {code}"
        if message:
            text += f": {message}"
        super().__init__(text)
