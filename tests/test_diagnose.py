"""``diagnose_mismatch``: which rewrite of the body (or secret) explains a mismatch."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from runflow_callbacks.diagnose import diagnose_mismatch
from runflow_callbacks.testing.factories import PayloadFactory
from runflow_callbacks.verifier import Secret, sign

SECRET = "whsec_diagnose_0123456789abcdef"
OTHER = "whsec_unrelated_fedcba9876543210"
_FACTORY = PayloadFactory(
    seed=3, clock=lambda: datetime(2026, 5, 6, 10, 0, 1, 5, tzinfo=timezone.utc)
)
BODY = _FACTORY.body(_FACTORY.batch("batch.succeeded", item_count=2, metadata={"note": "café"}))
SIGNATURE = sign(BODY, SECRET)


def _pretty(body: bytes) -> bytes:
    return json.dumps(json.loads(body), indent=2, ensure_ascii=False).encode() + b"\n"


REWRITES = {
    "trailing_newline": BODY + b"\n",
    "z_timestamps": BODY.replace(b"+00:00", b"Z"),
    "reserialized": json.dumps(json.loads(BODY), separators=(",", ":")).encode(),
    "reserialized_pretty": _pretty(BODY),
    "z_timestamps_reserialized": _pretty(BODY.replace(b"+00:00", b"Z")),
}


@pytest.mark.parametrize(("expected", "body"), REWRITES.items(), ids=REWRITES.keys())
def test_each_rewrite_is_named(expected: str, body: bytes) -> None:
    hint = diagnose_mismatch(body, SIGNATURE, [OTHER, SECRET])
    assert hint is not None
    assert hint.code == expected.removesuffix("_pretty")
    assert hint.secret.position == 1
    assert SECRET not in hint.message
    assert str(hint) == hint.message


def test_a_secret_missing_its_prefix_is_named() -> None:
    bare = Secret(SECRET.removeprefix("whsec_"), label="from-config")
    hint = diagnose_mismatch(BODY, SIGNATURE, [OTHER, bare])
    assert hint is not None
    assert hint.code == "secret_prefix"
    assert "from-config" in hint.message
    assert hint.secret.label == "from-config"


@pytest.mark.parametrize(
    "body",
    [BODY, BODY[:-1], b"not json at all", b"[1, 2", b"", b"\xff\xfe" * 10, b"[" * 100_000],
    ids=["wrong secret", "truncated", "not json", "broken json", "empty", "binary", "deep"],
)
def test_no_hint_when_no_rewrite_explains_it(body: bytes) -> None:
    assert diagnose_mismatch(body, SIGNATURE, OTHER) is None


def test_a_malformed_signature_gives_no_hint() -> None:
    assert diagnose_mismatch(BODY + b"\n", "sha256=" + SIGNATURE, SECRET) is None


def test_buffer_bodies_are_diagnosed_too() -> None:
    hint = diagnose_mismatch(memoryview(REWRITES["z_timestamps"]), SIGNATURE.encode(), SECRET)
    assert hint is not None
    assert hint.code == "z_timestamps"
