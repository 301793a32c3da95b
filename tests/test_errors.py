"""The exception tree: one base, attributes over prose, nothing secret in messages."""

from __future__ import annotations

import pytest

from runflow_callbacks import errors
from runflow_callbacks.errors import (
    ConfigurationError,
    InvalidPayloadError,
    MalformedSignatureError,
    MissingSignatureError,
    PayloadTooLargeError,
    RunflowAPIError,
    RunflowCallbackError,
    SignatureMismatchError,
    StoreError,
    VerificationError,
)


def test_every_public_exception_derives_from_the_base() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), RunflowCallbackError)
    assert issubclass(ConfigurationError, ValueError)
    for error in (MissingSignatureError, MalformedSignatureError, SignatureMismatchError):
        assert issubclass(error, VerificationError)
    for other in (InvalidPayloadError, PayloadTooLargeError, StoreError, RunflowAPIError):
        assert not issubclass(other, VerificationError)


def test_the_docstring_draws_every_exception() -> None:
    assert errors.__doc__ is not None
    for name in errors.__all__:
        assert name in errors.__doc__


def test_codes_for_http_answers_and_logs() -> None:
    assert MissingSignatureError().code == "missing_signature"
    assert MalformedSignatureError("length", length=3).code == "malformed_signature"
    assert SignatureMismatchError(secrets_tried=1).code == "signature_mismatch"
    assert VerificationError.code == "verification_failed"
    assert InvalidPayloadError("x").code == "invalid_payload"
    assert PayloadTooLargeError(limit=1).code == "payload_too_large"


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        ("length", "64 hex digits, got 12 characters"),
        ("non_hex", "not hex digits"),
        ("non_ascii", "non-ASCII"),
        ("prefix", "'sha256='"),
        ("multiple", "more than one"),
        ("something_new", "something_new"),
    ],
)
def test_malformed_reasons(reason: str, text: str) -> None:
    error = MalformedSignatureError(reason, length=12)
    assert (error.reason, error.length) == (reason, 12)
    assert text in str(error)


def test_mismatch_counts_secrets_in_words() -> None:
    assert str(SignatureMismatchError(secrets_tried=1)).endswith("any of 1 secret tried")
    three = SignatureMismatchError(secrets_tried=3)
    assert three.secrets_tried == 3
    assert str(three).endswith("any of 3 secrets tried")


def test_attribute_carrying_errors() -> None:
    invalid = InvalidPayloadError("bad", errors=[{"loc": ["run_id"], "type": "uuid_parsing"}])
    assert invalid.errors == [{"loc": ["run_id"], "type": "uuid_parsing"}]
    assert InvalidPayloadError("bad").errors == []
    too_large = PayloadTooLargeError(limit=1024, received=4096)
    assert (too_large.limit, too_large.received) == (1024, 4096)
    assert "1024 bytes" in str(too_large)
    api = RunflowAPIError(status=422, code="validation_error", message="in flight")
    assert (api.status, api.code, api.message, api.errors) == (
        422,
        "validation_error",
        "in flight",
        None,
    )
    assert str(api) == "Runflow API answered 422 validation_error: in flight"
    assert str(RunflowAPIError(status=503)) == "Runflow API answered 503"
